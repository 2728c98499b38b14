"""How every command prints its result (shared by the CLI's command groups)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def emit(result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], str] | None = None) -> None:
    """Print a command's result: one JSON line (machine) or a readable summary (human)."""
    if as_json:
        sys.stdout.flush()
        print(json.dumps(result, sort_keys=True, default=str), flush=True)
    else:
        print(human(result) if human else json.dumps(result, indent=2, sort_keys=True, default=str))
