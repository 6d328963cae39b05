"""``python -m bosun``."""

from bosun.cli import main

main()
