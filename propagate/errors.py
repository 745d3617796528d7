"""Errors a user can cause.

The library raises :class:`UserError` for bad input (an unknown name, a negative
variance, an unreadable file). The CLI turns it into one line
``propagate: error: ...`` and exit status 2. Anything else is a bug and raises.
"""


class UserError(ValueError):
    """Bad input from the user; the message is one line that says what to fix."""


def name_key(name, what: str) -> str:
    """The registry key of a name a user typed (stripped, lower case); :class:`UserError` if it is not a
    non-empty string. ``what`` names the kind of thing in the message (``"activation"``, ``"init"``)."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{what} name must be a non-empty string, got {name!r}")
    return name.strip().lower()
