"""ClickHouse through clickhouse-connect from one DSN: `chdb:///path` (embedded) or `http://host:8123`.

chDB runs one engine per process: every component that writes the audit trail in embedded mode does
so from the process that owns the store (the audit sink), and readers open it after.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import clickhouse_connect
import orjson

from schemas.audit import TABLES, AuditTable

DATABASE = "smc"
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
                    import os
                    os.makedirs(path, exist_ok=True)
            client = clickhouse_connect.get_client(dsn=dsn)
            _CLIENTS[dsn] = client
        return client


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
