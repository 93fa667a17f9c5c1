"""ICM workbench: low-rank adaptation of pre-trained vision backbones for image coding for machines."""

import warnings

# compressai scripts two helpers with torch.jit at import; torch >= 2.10 calls that deprecated.
# It is not ours to fix and it would greet every user on every command.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from icm_core.errors import BitstreamError, ConfigError, DatasetError, ICMError  # noqa: E402

__all__ = ["ICMError", "ConfigError", "DatasetError", "BitstreamError"]
__version__ = "0.1.0"
