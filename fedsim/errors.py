"""The errors a user can act on: one line that names the file or key and the way out.

Every module raises a subclass of ``FedsimError`` for problems the user can fix (a bad key, a
damaged file, a run that cannot resume); the CLI prints its message as one plain line on
stderr (no markup, no traceback unless ``--debug``) and exits with ``exit_code``. Anything
else is a bug in fedsim and is reported as such.
"""

from __future__ import annotations


class FedsimError(Exception):
    """A problem the user can fix; ``str(error)`` is the whole message."""

    exit_code = 1
    label = "error"  # how the CLI introduces the message


class UsageError(FedsimError):
    """Bad input: a config, an override, a path or a run directory that cannot be used."""

    exit_code = 2
