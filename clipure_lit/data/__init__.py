"""Datasets that yield ``(image in [0, 1], label, sample_id)`` and the Lightning data module."""
