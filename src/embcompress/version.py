"""Package and checkpoint-format versions."""

__version__ = "0.2.0"

#: Version of the on-disk checkpoint format (``quantization_config.format_version``).
FORMAT_VERSION = 1
