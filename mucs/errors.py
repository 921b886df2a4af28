"""Errors the user can act on: the CLI prints them in one line and exits with status 2."""


class MucsError(Exception):
    """A bad input or setting (corrupt image, wrong model folder, mismatched dataset ...)."""


class Cancelled(Exception):
    """Raised inside a long computation when its cancel event is set."""
