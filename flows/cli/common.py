"""What every command group shares: the ``--json`` option, the user-facing error type, the progress bar."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]


class CliError(Exception):
    """A user-facing failure: printed as one line (``error: <message>``), exit code 1."""


def require_prefect_database() -> None:
    """Before a command starts a Prefect flow: an unusable local Prefect database (``PREFECT_HOME/prefect.db``) is one
    `CliError` naming the file and what to do, instead of a temporary server that retries for minutes."""
    from infra.prefect_home import PrefectDatabaseError, check_prefect_database

    try:
        check_prefect_database()
    except PrefectDatabaseError as exc:
        raise CliError(str(exc)) from exc


def is_tty() -> bool:
    return sys.stderr.isatty()


@contextmanager
def progress_bar(desc: str, total: int | None = None) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar on stderr when interactive; a no-op callback ``(done, total)`` otherwise."""
    if not is_tty():
        yield lambda done, total: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)

    def update(done: int, total_: int) -> None:
        bar.total = total_
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
