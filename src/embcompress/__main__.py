"""``python -m embcompress``."""

from .cli import main

main()
