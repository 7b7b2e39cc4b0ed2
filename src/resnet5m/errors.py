"""The one exception type for expected, user-facing failures.

Anything raised as :class:`UserError` is printed by the CLI as a single line
(``resnet5m: error: ...``) with a non-zero exit code and no traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An expected failure caused by the user's input (bad path, bad value, bad file)."""

    exit_code = 2
