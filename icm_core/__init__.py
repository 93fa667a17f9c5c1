"""ICM workbench: low-rank adaptation of pre-trained vision backbones for image coding for machines."""

from icm_core.errors import BitstreamError, ConfigError, DatasetError, ICMError

__all__ = ["ICMError", "ConfigError", "DatasetError", "BitstreamError"]
__version__ = "0.1.0"
