"""Method options from command-line text: ``KEY=VALUE`` pairs and the grouped shortcuts."""

from __future__ import annotations

from typing import Any

from ..errors import EmbcompressError


def parse_value(text: str) -> Any:
    """An option value: int, float, true/false, a comma list of those, or the string itself."""
    if "," in text:
        return [parse_value(part.strip()) for part in text.split(",") if part.strip()]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_method_options(
    pairs: list[str], buckets: str | None = None, bucket_ranks: str | None = None
) -> dict[str, Any]:
    """Method options from ``-O KEY=VALUE`` pairs and the grouped shortcuts."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EmbcompressError(f"--option expects KEY=VALUE, got '{pair}'")
        options[key.strip()] = parse_value(value.strip())
    for key, text in (("buckets", buckets), ("bucket_ranks", bucket_ranks)):
        if text is not None:
            options[key] = [parse_value(item.strip()) for item in text.split(",") if item.strip()]
    return options
