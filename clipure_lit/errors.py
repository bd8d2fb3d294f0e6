"""Errors that are the user's to fix.

Every subclass carries a message that names the offending value, what was expected and how to fix it.
Entry points (``eval.py``, ``train.py``) print these as one paragraph instead of a traceback.
"""


class ClipureError(Exception):
    """Base class for problems caused by input (config, files, environment), not by a bug."""


class ConfigError(ClipureError, ValueError):
    """An unknown key, a value of the wrong type, an unknown choice or incompatible options."""


class DataNotFoundError(ClipureError, FileNotFoundError):
    """A dataset, id list or other input file is missing."""


class WeightsUnavailableError(ClipureError, RuntimeError):
    """Pretrained weights are neither cached locally nor downloadable."""
