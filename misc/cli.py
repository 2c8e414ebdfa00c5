"""Entry-point wrapper: a UserError becomes one line on stderr and exit status 2."""
from __future__ import annotations

import sys
from typing import Callable

from misc.errors import UserError


def guarded(fn: Callable[[], object]) -> None:
    """Call ``fn``; print a UserError as 'error: <message>' and exit 2 instead of a traceback."""
    try:
        fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
