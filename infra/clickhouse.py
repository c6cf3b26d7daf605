"""ClickHouse through clickhouse-connect from one DSN: `chdb:///path` (embedded) or `http://host:8123`.

chDB runs one engine per process: every component that writes the audit trail in embedded mode does
so from the process that owns the store (the audit sink), and readers open it after.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import clickhouse_connect
import orjson

from schemas.audit import TABLES, AuditTable

DATABASE = "smc"
LATEST = "smc_latest"   # views on the latest finished run's tables: what `smc query` reads by default
_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()


def connect(dsn: str):
    """One client per DSN per process (chDB allows a single engine per process)."""
    with _LOCK:
        client = _CLIENTS.get(dsn)
        if client is None:
            if dsn.startswith("chdb://"):
                path = dsn[len("chdb://"):]
                if path and path != "memory":
                    os.makedirs(path, exist_ok=True)
            client = clickhouse_connect.get_client(dsn=dsn)
            _CLIENTS[dsn] = client
        return client


class ClickHouseUnavailable(RuntimeError):
    """The audit trail's ClickHouse cannot be used: the DSN and the fix, said plainly."""


_SCHEMES = ("chdb://", "http://", "https://", "clickhouse://")


# clickhouse-connect's compatibility table (its docs, as of 0.9.2; 1.12 is installed) marks ClickHouse
# 25.3 LTS and later supported and older lines "partial"; 18.16 (the only server Debian ships here) fails
# inside the driver's own connect sequence ("Unknown identifier: readonly", issue 19).
MIN_SERVER_VERSION = (25, 3)


def server_version_refusal(version: str, minimum: tuple[int, int] = MIN_SERVER_VERSION) -> str | None:
    """Why a ClickHouse server of `version` (SELECT version(), e.g. "25.8.2.29" or
    "22.8.15.25.altinitystable") is refused, or None when it is supported. Pure."""
    parts = [int(p) for p in version.strip().split(".")[:2] if p.isdigit()]
    if len(parts) < 2:
        return f"ClickHouse server version {version!r} is not major.minor[...]; cannot tell whether it is supported"
    if tuple(parts) < minimum:
        return (f"ClickHouse server {version} is older than {minimum[0]}.{minimum[1]}, the oldest clickhouse-connect "
                f"supports; upgrade the server, or unset SMC_CLICKHOUSE_DSN for the embedded chDB")
    return None


def check_dsn(dsn: str, timeout: float = 3.0) -> str:
    """Before any work: the DSN names a usable ClickHouse, within `timeout` seconds. Returns what was
    found ("chDB <version> <path>" or "server <version> at <url>"); raises ClickHouseUnavailable otherwise.
    The embedded engine is not opened here (one chDB engine per process: the audit phase opens it)."""
    if not dsn.startswith(_SCHEMES):
        raise ClickHouseUnavailable(f"SMC_CLICKHOUSE_DSN={dsn!r}: not a ClickHouse DSN; use chdb:///path "
                                    "(embedded) or http://host:8123 (a server)")
    if dsn.startswith("chdb://"):
        path = dsn[len("chdb://"):]
        if path and path != "memory":
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise ClickHouseUnavailable(f"SMC_CLICKHOUSE_DSN={dsn!r}: cannot create {path}: {exc.strerror}") from None
        from importlib.metadata import version   # not `import chdb`: that loads the engine
        return f"chDB {version('chdb')} (embedded) at {path or 'memory'}"
    import logging
    from infra.settings import shown
    where = shown("clickhouse_dsn", dsn)   # a DSN may carry a password: never in a message
    driver_log = logging.getLogger("clickhouse_connect")
    level = driver_log.level
    driver_log.setLevel(logging.CRITICAL)   # the failure is said once, below, not also by the driver's logger
    try:
        client = clickhouse_connect.get_client(dsn=dsn, connect_timeout=timeout, send_receive_timeout=timeout,
                                               query_retries=0)
    except Exception as exc:   # the driver's own message says why (refused, DNS, auth, an old server)
        version = _server_version_over_http(dsn, timeout)
        refusal = version and server_version_refusal(version)
        if refusal:
            raise ClickHouseUnavailable(f"{where}: {refusal}") from None
        text = str(exc) or type(exc).__name__
        errno = re.search(r"\[Errno -?\d+\][^\"')]*", text)
        reason = errno.group(0).strip() if errno else text.splitlines()[0][:300]
        raise ClickHouseUnavailable(f"no ClickHouse server at {where} ({reason}); start it, fix "
                                    "SMC_CLICKHOUSE_DSN, or unset it for the embedded chDB") from None
    finally:
        driver_log.setLevel(level)
    try:
        refusal = server_version_refusal(client.server_version or "")
        if refusal:
            raise ClickHouseUnavailable(f"{where}: {refusal}")
        return f"server {client.server_version} at {where}"
    finally:
        client.close()


def _server_version_over_http(dsn: str, timeout: float) -> str | None:
    """SELECT version() over the bare HTTP interface (every server version has it), for naming a server the
    driver cannot talk to; None when that fails too (a dead server, not an old one)."""
    import base64
    import urllib.request
    from urllib.parse import quote, unquote, urlsplit
    parts = urlsplit(dsn)
    secure = parts.scheme == "https"
    port = parts.port or (8443 if secure else 8123)
    url = f"{'https' if secure else 'http'}://{parts.hostname}:{port}/?query={quote('SELECT version()')}"
    request = urllib.request.Request(url)
    if parts.username:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read(200).decode("utf-8", "replace").strip()
    except Exception:
        return None
    return text if re.fullmatch(r"\d+(\.\w+)+", text) else None


def run_database(namespace: str) -> str:
    """The database of one run's audit trail, named after its namespace (identifier-safe)."""
    return "smc_" + re.sub(r"\W", "_", namespace)


@contextlib.contextmanager
def exclusive(dsn: str) -> Iterator[None]:
    """While held, this process alone has the embedded engine of a chDB path (chDB allows one process
    per path: concurrent runs take turns on their audit phase); the engine is released after unless
    this process had it open before. A server DSN needs no turn."""
    path = dsn[len("chdb://"):] if dsn.startswith("chdb://") else ""
    if not path or path == "memory":
        yield
        return
    lock = Path(path.rstrip("/") + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        opened_before = dsn in _CLIENTS
        try:
            yield
        finally:
            if not opened_before:
                with _LOCK:
                    client = _CLIENTS.pop(dsn, None)
                if client is not None:
                    client.close()
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cell(value: Any) -> Any:
    if isinstance(value, dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return value


class AuditStore:
    """The audit trail: idempotent batched inserts of message dataclasses, and SQL queries."""

    def __init__(self, dsn: str, database: str = DATABASE) -> None:
        self.dsn = dsn
        self.database = database
        self.client = connect(dsn)

    def ensure_schema(self) -> None:
        self.client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        for table in TABLES.values():
            self.client.command(table.ddl(self.database))
        from infra.analytics import VIEWS  # views read the tables above
        for name, sql in VIEWS.items():
            self.client.command(f"CREATE OR REPLACE VIEW {self.database}.{name} AS {sql.format(db=self.database)}")

    def point_latest(self, alias: str = LATEST) -> None:
        """Make `alias` show this database: one view per table (deduplicated, FINAL) and per analytics view."""
        from infra.analytics import VIEWS
        self.client.command(f"CREATE DATABASE IF NOT EXISTS {alias}")
        for name in TABLES:
            self.client.command(f"CREATE OR REPLACE VIEW {alias}.{name} AS SELECT * FROM {self.database}.{name} FINAL")
        for name in VIEWS:
            self.client.command(f"CREATE OR REPLACE VIEW {alias}.{name} AS SELECT * FROM {self.database}.{name}")

    def insert(self, table: str | AuditTable, messages: Sequence[Any]) -> int:
        """Insert message dataclasses (all of the table's type) in one batch."""
        if not messages:
            return 0
        t = TABLES[table] if isinstance(table, str) else table
        names = [n for n, _ in t.columns()]
        rows = [[_cell(getattr(m, n)) for n in names] for m in messages]
        self.client.insert(f"{self.database}.{t.name}", rows, column_names=names)
        return len(rows)

    def query(self, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
        res = self.client.query(sql, parameters=parameters)
        cols, rows = list(res.column_names), [tuple(r) for r in res.result_rows]
        body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--")).strip().rstrip(";")
        if not cols and not rows and body.upper().startswith(("SELECT", "WITH")):
            # the chDB backend returns no column names for an empty result; a header still helps
            cols = [r[0] for r in self.client.query(f"DESCRIBE ({body})", parameters=parameters).result_rows]
        return cols, rows

    def scalar(self, sql: str) -> Any:
        """The first column of the first row, typed (command() would return text)."""
        rows = self.client.query(sql).result_rows
        return rows[0][0] if rows else None

    def count(self, table: str, where: str = "1") -> int:
        return int(self.client.command(f"SELECT count() FROM {self.database}.{table} FINAL WHERE {where}"))
