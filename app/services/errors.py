"""Errors services raise to say "retrying will not help"."""


class PermanentError(Exception):
    """Bad input, a missing file, an unknown tracking number: waiting cannot heal it, so no retry."""
