"""Errors services raise to say "retrying will not help"."""


class PermanentError(Exception):
    """Bad input, a missing file, an unknown tracking number: waiting cannot heal it, so no retry."""


class MissingDependencyError(PermanentError):
    """A program or font the task needs is not installed; the message says what to install."""
