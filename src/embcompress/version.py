"""Package and checkpoint-format versions."""

__version__ = "0.2.0"

#: Version of the on-disk checkpoint format (``quantization_config.format_version``).
#: 2: transform codes may store their most frequent rows whole (``head_ids``, ``head_values``, ``head_scale``).
FORMAT_VERSION = 2
