"""``eval.py`` end to end with pixel purifiers in the tiny config: clean and robust evaluation (purifier's own
gradient, BPDA, EOT for the random one), alone and combined with a latent purifier."""

from __future__ import annotations

import pytest

import eval as eval_script
from conftest import needs_shared_cifar, tiny_args

pytestmark = pytest.mark.e2e  # runs whole jobs: left out of `make test-fast`

FAST = ["data.num_samples=4", "data.batch_size=4", "attack.entries.fast.base=apgd_ce", "attack.n_iter=1", "attack.eps=16",
        "attack.eot_samples=2", "trainer.num_threads=1"]

CASES = {
    "diffpure": (["purifier=diffpure_tiny", "purifier.diffpure.unet.block_out_channels=[16,32]",
                  "purifier.diffpure.unet.norm_num_groups=8"], ["fast", "fast@bpda_identity", "fast@eot"], ["DiffPurePurifier"]),
    "clipure_pixel": (["purifier=clipure_pixel", "purifier.clipure_pixel.num_steps=2"], ["fast", "fast@as_released"],
                      ["ClipurePixel"]),
    "jpeg": (["purifier=jpeg"], ["fast", "fast@bpda_identity"], ["JpegPurifier"]),
    "pixel+latent": (["purifier=clipure_cos_plus_jpeg", "purifier.clipure_cos.norm_scope=sample"], ["fast@bpda_identity", "fast@full"],
                     ["JpegPurifier", "ClipureCos"]),
}


@needs_shared_cifar
@pytest.mark.parametrize("case", list(CASES))
def test_clean_and_robust_eval_with_pixel_purifiers(case, tmp_path):
    overrides, attacks, classes = CASES[case]
    metrics = eval_script.main(tiny_args(tmp_path, *overrides, *FAST, f"attack.run=[{','.join(attacks)}]"))
    assert metrics["num_samples"] == 4 and 0.0 <= metrics["clean"]["acc"] <= 1.0
    assert list(metrics["robust"]) == attacks + ["worst_case"]
    assert [d["class"] for d in metrics["purifiers"] if d["class"] != "IdentityPurifier"] == classes
    flags = metrics["flags"]
    if case == "jpeg":  # non-differentiable: flagged unless the attack is BPDA
        assert flags["nondifferentiable_without_bpda/fast"] == 1.0 and flags["zero_grad/fast"] == 1.0
        assert flags["nondifferentiable_without_bpda/fast@bpda_identity"] == 0.0
    if case == "diffpure":  # random: EOT silences the randomness flag, and the exact gradient is not masked
        assert flags["random_without_eot/fast"] == 1.0 and flags["random_without_eot/fast@eot"] == 0.0
        assert flags["zero_grad/fast"] == 0.0 and flags["nondifferentiable_without_bpda/fast"] == 0.0
    if case == "clipure_pixel":
        assert flags["nondifferentiable_without_bpda/fast"] == 0.0 and flags["weak_grad/fast"] == 0.0
