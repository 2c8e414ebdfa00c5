"""Entry-point helpers: a UserError becomes one line on stderr and exit status 2; boolean flags."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from misc.errors import UserError


def guarded(fn: Callable[[], object]) -> None:
    """Call ``fn``; print a UserError as 'error: <message>' and exit 2 instead of a traceback.

    A UserError raised in a DataLoader worker reaches here re-raised with the worker's traceback as its
    message; only the original message (its last line) is printed.
    """
    try:
        fn()
    except UserError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        prefix = f"{UserError.__module__}.{UserError.__qualname__}: "
        print(f"error: {msg[len(prefix):] if msg.startswith(prefix) else msg}", file=sys.stderr)
        sys.exit(2)


def str2bool(v: str) -> bool:
    """argparse type for real booleans: true/false, yes/no, 1/0 (any case)."""
    if v.lower() in ("true", "yes", "1", "on"):
        return True
    if v.lower() in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")
