"""The command line, one module per command (train, generate, attribute and its collections); `main`
parses and runs one (`mucs ...`, `python -m mucs ...`)."""
from mucs.cli.common import setup_logging
from mucs.cli.main import build_parser, main

__all__ = ["build_parser", "main", "setup_logging"]
