"""Errors that the command line turns into one line on stderr and a non-zero exit."""


class NitroEmuError(Exception):
    """Base class for every error a user can cause (bad input, bad option, unbootable image)."""


class UsageError(NitroEmuError):
    """A wrong or missing command-line option."""
