"""One error family for everything a user can get wrong.

Every message names the offending file, field or value and says what would fix it.
"""

from __future__ import annotations


class ICMError(Exception):
    """Base class of all errors raised on bad input to the workbench."""


class ConfigError(ICMError, ValueError):
    """A configuration value, override or checkpoint does not fit."""


class DatasetError(ICMError, ValueError):
    """A dataset folder, split file or sample is missing or malformed."""


class BitstreamError(ICMError, ValueError):
    """A compressed stream is truncated, corrupted, or made by another model."""
