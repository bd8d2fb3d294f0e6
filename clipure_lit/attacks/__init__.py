"""Robust evaluation: attack specs and presets, the AutoAttack adapter, gradient modes, transfer, masking checks.

Attacks only ever see a classifier (images in [0, 1] at attack resolution -> logits); they never import a
purifier. The Lightning side lives in ``clipure_lit.callbacks.robust_eval``.
"""
