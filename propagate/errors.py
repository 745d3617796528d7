"""Errors a user can cause.

The library raises :class:`UserError` for bad input (an unknown name, a negative
variance, an unreadable file). The CLI turns it into one line
``propagate: error: ...`` and exit status 2. Anything else is a bug and raises.
"""


class UserError(ValueError):
    """Bad input from the user; the message is one line that says what to fix."""
