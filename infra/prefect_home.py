"""Prefect's local home, checked before a command starts a flow: an unusable ``PREFECT_HOME/prefect.db`` would
otherwise cost minutes of a temporary API server's retries and thousands of log lines before a vague timeout
(measured: 3 min 10 s, 7,690 stderr lines); here it is one error naming the file and the fix.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class PrefectDatabaseError(RuntimeError):
    """Prefect's local database cannot be used; the message names the file and what to do."""


def check_prefect_database() -> None:
    """Raise `PrefectDatabaseError` naming the file and the fix if Prefect's local database cannot be opened.

    Only for the local SQLite database the temporary API server uses (no ``PREFECT_API_URL``): a server's database
    is the server's business. Cheap (the header and the schema table, read-only); a missing file is fine (Prefect
    creates it), a locked one too (another run is using it).
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return
    home = Path(settings.home).expanduser()
    if home.exists() and not home.is_dir():
        raise PrefectDatabaseError(
            f"PREFECT_HOME {home} is not a folder: remove or rename that file, or set PREFECT_HOME to a folder"
        )
    url = settings.server.database.connection_url
    text = url.get_secret_value() if url is not None else ""
    if not text.startswith("sqlite") or ":///" not in text:
        return
    path = text.split(":///", 1)[1].split("?", 1)[0]
    if not path or path == ":memory:":
        return
    db = Path(path).expanduser()
    if not db.exists():
        return
    fix = (
        "move it aside (or delete it) and Prefect starts a new one — this only loses Prefect's run history; the "
        "cached task results under <run root>/.prefect are kept — or set PREFECT_HOME to another folder"
    )
    if not db.is_file():
        raise PrefectDatabaseError(f"the Prefect database {db} is not a file: {fix}")
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=0.2)
        try:
            con.execute("PRAGMA schema_version").fetchone()
            con.execute("SELECT name, sql FROM sqlite_master").fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return  # in use by another run: not broken
        raise PrefectDatabaseError(f"the Prefect database {db} cannot be read ({exc}): {fix}") from exc
    except sqlite3.DatabaseError as exc:
        raise PrefectDatabaseError(f"the Prefect database {db} is unusable ({exc}): {fix}") from exc
