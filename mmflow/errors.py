"""The one base class of every error a user's input can cause (a file, a setting, the data, the machine).

`mmflow` commands print such an error as one line, `mmflow <verb>: error: <message>`, and exit 2; the
message names the file, key or value at fault. Any other exception is a bug in mmflow and keeps its
traceback, so it can be reported. A new expected failure gets a subclass of `UserError` (mixed with
the builtin it specialises, so `except ValueError` callers keep working), never a new `except` in
the CLI.
"""

from __future__ import annotations

__all__ = ["MissingInput", "UserError"]


class UserError(Exception):
    """An expected failure caused by the user's input; its message alone tells what to fix."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named is not there, or is not the kind of file or folder asked for."""
