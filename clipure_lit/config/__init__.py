"""Typed configuration: dataclass schemas (``schema``) and composition from ``conf/`` plus overrides (``loader``)."""
