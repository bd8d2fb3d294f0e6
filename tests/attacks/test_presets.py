"""Attack configuration: presets, ``@grad_mode`` suffixes, user entries, global overrides, units, class counts."""

from __future__ import annotations

import pytest

from clipure_lit.attacks.presets import PRESETS, adapt_to_classes, attack_config, resolve_attacks
from clipure_lit.config.loader import load_config
from clipure_lit.attacks.config import AttackGradMode, AttackNorm, AutoAttackVersion
from clipure_lit.errors import ConfigError


def _one(**values):
    (spec,) = resolve_attacks(attack_config(**values))
    return spec


def test_released_clipure_preset_is_apgd_ce_5_restarts_plus_apgd_t_9_targets_at_4_over_255():
    spec = _one(run=["aa_clipure"])
    assert spec.version == AutoAttackVersion.custom and spec.sub_attacks == ("apgd-ce", "apgd-t")
    assert (spec.n_iter, spec.n_restarts, spec.n_target_classes) == (100, 5, 9)
    assert spec.norm == AttackNorm.Linf and spec.eps == pytest.approx(4 / 255)
    assert spec.grad_mode == AttackGradMode.purifier and spec.white_box


def test_eps_units_and_norm_defaults():
    assert _one(run=["apgd_ce"], eps=8).eps == pytest.approx(8 / 255)
    assert _one(run=["apgd_ce"], norm="L2").eps == pytest.approx(0.5)
    assert _one(run=["apgd_ce"], norm="L2", eps=1.5).eps == pytest.approx(1.5)
    with pytest.raises(ConfigError, match="attack.eps"):
        _one(run=["apgd_ce"], eps=0)


def test_grad_mode_suffix_entries_and_precedence():
    cfg = attack_config(run=["aa_clipure@full", "aa_clipure@bpda_identity", "mine", "transfer_clip", "square"],
                        grad_mode="as_released", n_iter=7,
                        entries={"mine": {"base": "apgd_ce", "n_iter": 3, "grad_mode": "eot"}})
    specs = {s.name: s for s in resolve_attacks(cfg)}
    assert specs["aa_clipure@full"].grad_mode == AttackGradMode.full
    assert specs["aa_clipure@bpda_identity"].grad_mode == AttackGradMode.bpda_identity
    assert specs["aa_clipure@full"].n_iter == 7  # attack.n_iter beats the preset's 100
    assert specs["mine"].n_iter == 3 and specs["mine"].eot_samples == 20  # the user entry beats attack.n_iter
    assert specs["square"].grad_mode == AttackGradMode.as_released and specs["square"].black_box
    assert specs["transfer_clip"].transfer_from == "undefended" and not specs["transfer_clip"].white_box
    assert specs["transfer_clip"].sub_attacks == ("apgd-ce", "apgd-t")


def test_an_entry_named_like_a_preset_tweaks_it():
    spec = _one(run=["aa_clipure"], entries={"aa_clipure": {"n_restarts": 1}})
    assert (spec.n_restarts, spec.n_target_classes, spec.sub_attacks) == (1, 9, ("apgd-ce", "apgd-t"))


@pytest.mark.parametrize("values, match", [
    ({"run": ["aa_clipur"]}, "Unknown attack 'aa_clipur'.*aa_clipure"),
    ({"run": ["aa_clipure@fulll"]}, "fulll"),
    ({"run": ["x"], "entries": {"x": {"version": "custom"}}}, "without a list of attacks"),
    ({"run": ["x"], "entries": {"x": {"version": "custom", "attacks": ["pgd"]}}}, "unknown sub-attacks"),
    ({"run": ["x"], "entries": {"x": {"version": "standard", "attacks": ["apgd-ce"]}}}, "only allowed with version=custom"),
    ({"run": ["square", "square"]}, "more than once"),
    ({"run": ["x"], "entries": {"x": {"base": "x"}}}, "cyclic"),
    ({"run": ["apgd_ce"], "batch_size": 0}, "attack.batch_size"),
])
def test_bad_attack_settings_are_config_errors_that_name_the_value(values, match):
    with pytest.raises(ConfigError, match=match):
        resolve_attacks(attack_config(**values))


def test_dlr_attacks_are_skipped_when_classes_are_too_few():
    spec = _one(run=["aa_standard"])
    two = adapt_to_classes(spec, 2)
    assert two.version == AutoAttackVersion.custom and two.sub_attacks == ("apgd-ce", "fab-t", "square")
    assert two.n_restarts == 1 and two.n_target_classes == 1 and any("skipped" in n for n in two.notes)
    three = adapt_to_classes(_one(run=["aa_rand"]), 3)
    assert three.sub_attacks == ("apgd-ce", "apgd-dlr") and three.version == AutoAttackVersion.rand  # DLR needs 3
    five = adapt_to_classes(_one(run=["aa_clipure"]), 5)
    assert five.sub_attacks == ("apgd-ce", "apgd-t") and five.n_target_classes == 4
    assert adapt_to_classes(spec, 10) is spec


def test_every_attack_config_file_loads_and_resolves():
    from clipure_lit.config.loader import list_choices

    for choice in list_choices("attack"):
        cfg = load_config([f"attack={choice}", "clip=tiny_random"])
        for spec in resolve_attacks(cfg.attack):
            assert spec.eps > 0


def test_sweep_style_dotted_overrides():
    """What a W&B sweep emits with ${args_no_hyphens}."""
    cfg = load_config(["attack=adaptive", "clip=tiny_random", "attack.eps=8", "attack.norm=L2", "attack.grad_mode=full",
                       "attack.run=[aa_clipure,square]", "attack.entries.aa_clipure.n_iter=5"])
    specs = resolve_attacks(cfg.attack)
    assert [s.name for s in specs] == ["aa_clipure", "square"]
    assert specs[0].grad_mode == AttackGradMode.full and specs[0].eps == 8.0 and specs[0].n_iter == 5


def test_presets_are_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "evaluation.md").read_text()
    for name in PRESETS:
        assert f"`{name}`" in doc
    for mode in AttackGradMode:
        assert f"`{mode.value}`" in doc
