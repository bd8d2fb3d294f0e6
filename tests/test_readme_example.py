"""The README's worked example of a new purifier runs as written."""

from __future__ import annotations

import re

import pytest

import eval as eval_script
from clipure_lit.purifiers import registry

from conftest import PROJECT_ROOT, needs_shared_cifar, tiny_args


@pytest.fixture
def readme_purifier():
    readme = (PROJECT_ROOT / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "register_purifier" in block)
    name = re.search(r'register_purifier\("(\w+)"', code).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the documented example itself
    yield name, namespace
    registry._REGISTRY.pop(name, None)


@needs_shared_cifar
def test_readme_purifier_example(readme_purifier, tmp_path):
    import torch

    name, namespace = readme_purifier
    purifier = namespace["MeanBlur"]()
    x = torch.rand(2, 3, 8, 8)
    assert purifier(x).shape == x.shape
    metrics = eval_script.main(tiny_args(tmp_path, f"purifier.pixel={name}", "data.num_samples=8", "attack=quick",
                                         "attack.run=[apgd_ce]", "attack.n_iter=2", "trainer.num_threads=1"))
    assert metrics["robust"]["apgd_ce"]["total"] == 8
