"""Adding a purifier takes its module, its YAML file and one import line: the README's ``mean_blur`` example,
written into a temporary package, composes from its YAML, validates its keys, and is then covered by the
registry-parametrised contract tests without editing them. Runs in subprocesses so this test process's registry stays
as shipped."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, needs_shared_cifar, tiny_args

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`


def readme_block(language: str, first_line: str) -> str:
    """The README code block in ``language`` whose first line is ``first_line`` (without that line)."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    for block in re.findall(rf"```{language}\n(.*?)```", readme, flags=re.S):
        lines = block.splitlines()
        if lines and lines[0].strip() == first_line:
            return "\n".join(lines[1:]) + "\n"
    raise AssertionError(f"README has no ```{language} block starting with {first_line!r}")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> tuple[Path, Path]:
    """``(package folder on PYTHONPATH, conf folder)`` with the README's module, its YAML and one import line."""
    root = tmp_path_factory.mktemp("extension")
    package = root / "site"
    package.mkdir()
    (package / "mean_blur.py").write_text(readme_block("python", "# clipure_lit/purifiers/mean_blur.py"))
    # The one import line (in the library it sits in clipure_lit/purifiers/__init__.py); a pytest plugin here.
    (package / "mean_blur_plugin.py").write_text("import mean_blur  # noqa: F401  (registers the purifier)\n")
    conf = root / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    (conf / "purifier" / "mean_blur.yaml").write_text(readme_block("yaml", "# conf/purifier/mean_blur.yaml"))
    return package, conf


def run(package: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), str(PROJECT_ROOT)])}
    return subprocess.run([sys.executable, *argv], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_readme_purifier_composes_from_its_yaml_and_validates_its_keys(plugin):
    package, conf = plugin
    script = textwrap.dedent(f"""
        import mean_blur
        from clipure_lit.config.loader import load_config
        from clipure_lit.errors import ConfigError

        cfg = load_config(["experiment=tiny", "purifier=mean_blur", "purifier.mean_blur.size=5"], conf_dir={str(conf)!r})
        assert cfg.purifier.pixel == "mean_blur" and cfg.purifier.mean_blur.size == 5
        assert set(cfg.purifier) == {{"latent", "pixel", "seed", "mean_blur"}}
        for bad, match in ((["purifier=mean_blur", "purifier.mean_blur.size=4"], "purifier.mean_blur.size=4"),
                           (["purifier=clipure_cos", "purifier.mean_blur.size=5"], "do not read it")):
            try:
                load_config(["experiment=tiny", *bad], conf_dir={str(conf)!r})
            except ConfigError as exc:
                assert match in str(exc), exc
            else:
                raise AssertionError(bad)
        print("OK")
    """)
    done = run(package, "-c", script)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr


def test_registry_parametrised_contract_tests_cover_the_new_purifier(plugin):
    package, _ = plugin
    done = run(package, "-m", "pytest", "-q", "-p", "mean_blur_plugin", "-p", "no:cacheprovider",
               "tests/purifiers/test_contract.py", "-k", "mean_blur")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\b2 passed\b", done.stdout), done.stdout[-2000:]  # contract + gradient-mode views


@pytest.mark.slow  # a whole eval.py run in a subprocess; the contract tests above already cover the purifier
@needs_shared_cifar
def test_readme_purifier_runs_through_eval_with_an_attack(plugin, tmp_path):
    package, _ = plugin
    script = textwrap.dedent(f"""
        import mean_blur, torch
        import eval as eval_script

        x = torch.rand(2, 3, 8, 8)
        assert mean_blur.MeanBlur(3)(x).shape == x.shape
        metrics = eval_script.main({tiny_args(tmp_path, "purifier.pixel=mean_blur", "purifier.mean_blur.size=3",
                                              "data.num_samples=8", "attack=quick", "attack.run=[apgd_ce]",
                                              "attack.n_iter=2", "trainer.num_threads=1")!r})
        assert metrics["robust"]["apgd_ce"]["total"] == 8, metrics
        print("OK")
    """)
    done = run(package, "-c", script)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
