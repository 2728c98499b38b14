"""The `vlrepro` command line: one module per command group (``flows/cli/<group>.py``), assembled here by name, and
the error contract `main` keeps for every command.

Conventions every command keeps:
- ``--help`` everywhere; heavy libraries (torch, prefect, ray, mlflow, numpy) are imported inside commands, so
  importing this package (and ``--help``) is instant;
- ``--json`` prints exactly one JSON object as the **last line of stdout** (logs and progress go to stderr);
- progress bars only when stderr is a terminal;
- every failure is one line on stderr (``error: ...``) and a non-zero exit — 2 for usage errors (a bad option
  value or file argument), 130 for Ctrl-C, 143 for SIGTERM, 1 for everything else — and, with ``--json``, the JSON
  object ``{"error": ...}`` as the last line of stdout. Never a traceback (``VLREPRO_DEBUG=1`` shows it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import typer
import typer.main

# typer ≥ 0.2x vendors its own click; its exception classes are the ones raised
from typer._click import exceptions as click_exc

from flows.cli import data, ingest, reproduce, train
from flows.cli import eval as evaluate
from flows.cli.common import CliError
from flows.serve import serve

# A research CLI should not phone home: Prefect/Ray/MLflow telemetry is off unless the user turns it back on.
for _var, _value in (
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    ("RAY_USAGE_STATS_ENABLED", "0"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("DO_NOT_TRACK", "1"),
    # Prefect's temporary API server gets 20 s to start by default; a loaded 2-core machine needs more.
    ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"),
):
    os.environ.setdefault(_var, _value)

#: ``vlrepro <group> <command>``: the command groups, one module each
GROUPS: dict[str, typer.Typer] = {"data": data.app, "eval": evaluate.app, "train": train.app}
#: ``vlrepro <command>``: the commands without a group
COMMANDS: dict[str, Callable[..., None]] = {
    "ingest": ingest.ingest,
    "reproduce": reproduce.reproduce,
    "serve": serve,
}

app = typer.Typer(
    name="vlrepro",
    help="CLIP-era video-language reproductions as runnable, resumable DAGs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)

#: exit codes of the two stop signals (128 + the signal number: what a shell reports for a process they killed)
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _Stop:
    """The stop signal `main` saw last (SIGINT when none: a bare KeyboardInterrupt is Ctrl-C)."""

    signum: int = signal.SIGINT


def _on_sigterm(signum: int, frame: object) -> None:
    # `kill` (SIGTERM) ends the command like Ctrl-C: Python's default would exit without cleanup, leaving the temporary
    # Prefect server and the local Ray processes this run started behind as orphans. Prefect may catch the
    # KeyboardInterrupt and raise its own, so the signal is remembered here, not in the exception.
    _Stop.signum = signum
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn every failure into one ``error:`` line (and ``{"error"}`` with --json)."""
    args = list(sys.argv[1:] if argv is None else argv)
    wants_json = "--json" in args
    previous: Any = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:  # handlers can only be installed from the main thread
        _Stop.signum = signal.SIGINT
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args, wants_json)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args: list[str], wants_json: bool) -> int:
    # The click command is driven directly, not through `app(...)`: typer's runner turns KeyboardInterrupt into a
    # silent exit 130 (a SIGTERM printed nothing) and EOFError (an empty .npy) into "aborted", exit 130.
    command = typer.main.get_command(app)
    try:
        with command.make_context("vlrepro", args) as ctx:
            command.invoke(ctx)
        return 0
    except typer.Exit as exc:  # --help, or a command that printed its own error line
        return int(exc.exit_code)
    except click_exc.NoArgsIsHelpError as exc:
        print(exc.format_message())
        return 0
    except click_exc.UsageError as exc:
        hint = (
            f" (see `vlrepro {exc.ctx.command_path.split(' ', 1)[1]} --help`)"
            if exc.ctx and " " in exc.ctx.command_path
            else ""
        )
        return _fail(f"{exc.format_message()}{hint}", wants_json, 2)
    except typer.Abort:
        return _fail("aborted", wants_json, 130)
    except KeyboardInterrupt:
        stop = signal.Signals(_Stop.signum)
        return _fail(f"stopped by {stop.name}", wants_json, SIGNAL_EXIT.get(stop, 128 + stop.value))
    except SystemExit as exc:  # a library's sys.exit, or `infra.tracking.RunTerminated` (SIGTERM during training)
        code = exc.code
        if code is None or code == 0:
            return 0
        if code == SIGNAL_EXIT[signal.SIGTERM]:
            return _fail("stopped by SIGTERM", wants_json, code)
        if isinstance(code, int):
            return _fail(f"exited with status {code}", wants_json, code)
        return _fail(str(code), wants_json, 1)
    except Exception as exc:  # user-facing: one line, never a traceback wall (VLREPRO_DEBUG=1 shows it)
        if os.environ.get("VLREPRO_DEBUG"):
            raise
        return _fail(_describe(exc), wants_json, 1)


#: exceptions whose message is meant for the user; anything else is also a bug report, so the line says how to see more
_EXPECTED = (CliError, ValueError, OSError, RuntimeError)


def _describe(exc: Exception) -> str:
    """One line for an exception: ``Type: first line of the message`` (a `CliError` is its message alone)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if isinstance(exc, CliError):
        return text
    name = type(exc).__name__
    if name in ("Error", "Exception"):  # csv.Error, ...: the module says what it is
        name = f"{type(exc).__module__.lstrip('_').split('.')[0]}.{name}"
    line = f"{name}: {text}" if text else name
    if not isinstance(exc, _EXPECTED):
        line += " (VLREPRO_DEBUG=1 shows the traceback)"
    return line


def _fail(message: str, wants_json: bool, code: int) -> int:
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    if wants_json:
        print(json.dumps({"error": message}), flush=True)
    return code


__all__ = ["COMMANDS", "GROUPS", "CliError", "app", "main"]
