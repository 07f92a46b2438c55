"""User-facing errors.

Every problem a person can fix (a wrong name, a bad layer index, a malformed file) is raised as a
`UserError` with a message that says what was wrong and what is allowed. The CLI prints the message
without a traceback and exits with status 2; the app shows it as an error box.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the input that the user can fix; the message says how."""


class OfflineError(UserError):
    """Something needs a model hub or dataset hub that cannot be reached from here."""


class Cancelled(Exception):
    """Work stopped on purpose because something more urgent started (a user's request, a newer one)."""
