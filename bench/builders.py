"""Classifiers for the benchmarks, built by the code ``eval.py`` runs (``evaluation.load_clip`` / ``build_defended``)."""

from __future__ import annotations

from clipure_lit.config.loader import load_config


def shipped_classnames() -> list[str]:
    """CIFAR-10 class names as runs get them: from the shipped test sample (``get_classnames`` has no ``cifar10``)."""
    from clipure_lit.data.datamodule import ZeroShotDataModule

    datamodule = ZeroShotDataModule(load_config(["data=cifar10_sample"]).data)
    datamodule.setup("test")
    return list(datamodule.classnames)


class Defences:
    """Classifiers of one CLIP model (``base``: eval.py overrides) that share its backbone and head and differ only
    in their purifiers: ``Defences(["clip=cifar10_small"]).build(["purifier=clipure_cos"])``. ``device``: where the
    backbone is built and the text head computed (purifiers are built next to the backbone)."""

    def __init__(self, base: list[str], device: str = "cpu") -> None:
        from clipure_lit.evaluation import load_clip

        self.base = list(base)
        self.parts = load_clip(load_config(self.base), shipped_classnames(), device)

    def build(self, extra: list[str]):
        """The classifier of ``base + extra``, in eval mode."""
        from clipure_lit.evaluation import build_defended

        return build_defended(load_config([*self.base, *extra]), self.parts).eval()
