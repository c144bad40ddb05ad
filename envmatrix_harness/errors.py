"""Exceptions of the harness: each carries a one-line message and an exit code.

The CLI turns any of these into a result file with `status: "error"`, the message as `reason`,
one short line on stderr and the exit code below; nothing here ever ends in a bare traceback.
"""


class HarnessError(Exception):
    """Base class; `str(err)` is the whole one-line, user-facing message."""

    exit_code = 2


class HarnessInputError(HarnessError, ValueError):
    """Inputs cannot be made: unknown input name, dynamic dimension left unset, bad value text."""


class ModelError(HarnessError):
    """The model file is missing, unreadable, or newer than this runtime accepts."""


class ProviderError(HarnessError):
    """The requested execution provider (or torch device) is not available here."""


class UsageError(HarnessError):
    """The command line itself is wrong (bad option syntax, conflicting options)."""
