"""`python -m mucs ...`: the command line (mucs/cli, one module per command)."""
import sys

from mucs.cli import build_parser, main, setup_logging

__all__ = ["build_parser", "main", "setup_logging"]

if __name__ == "__main__":
    sys.exit(main())
