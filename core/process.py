"""How a one-shot command leaves the process."""

from __future__ import annotations

import os
import sys


def exit_now(code: int) -> None:
    """Flush and leave through ``os._exit``: the Temporal SDK can abort at interpreter exit in
    short-lived processes (sdk-python#300)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
