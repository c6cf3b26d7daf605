"""ClickHouse audit-trail tables, derived from the message dataclasses (one source of truth).

Every table is a ReplacingMergeTree on the message's natural id, so at-least-once delivery never
shows a duplicate in a query that reads with FINAL (all shipped views do).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from schemas.kline import Kline
from schemas.reject import Reject
from schemas.signal import Signal
from schemas.trading import Alert, Decision, Equity, Fill, Order, Position

_CH_TYPES = {str: "String", int: "Int64", float: "Float64", bool: "Bool"}


@dataclass(frozen=True)
class AuditTable:
    name: str
    message: type
    order_by: str
    version: str = ""          # ReplacingMergeTree version column ("" = last inserted wins)
    topic: str = ""            # the topic the audit sink reads into this table

    def columns(self) -> list[tuple[str, str]]:
        hints = typing.get_type_hints(self.message)
        out = []
        for f in dataclasses.fields(self.message):
            hint = hints[f.name]
            if hint in _CH_TYPES:
                out.append((f.name, _CH_TYPES[hint]))
            elif hint is dict or typing.get_origin(hint) is dict:
                out.append((f.name, "String"))  # JSON text
            elif typing.get_origin(hint) is list:
                inner = typing.get_args(hint)[0]
                out.append((f.name, f"Array({_CH_TYPES[inner]})"))
            else:
                raise TypeError(f"no ClickHouse type for {self.message.__name__}.{f.name}: {hint}")
        return out

    def ddl(self, database: str = "smc") -> str:
        cols = ",\n  ".join(f"`{n}` {t}" for n, t in self.columns())
        engine = f"ReplacingMergeTree({self.version})" if self.version else "ReplacingMergeTree"
        return (f"CREATE TABLE IF NOT EXISTS {database}.{self.name} (\n  {cols},\n"
                f"  `inserted_at` DateTime64(3) DEFAULT now64(3)\n) ENGINE = {engine} ORDER BY ({self.order_by})")


TABLES: dict[str, AuditTable] = {t.name: t for t in [
    AuditTable("klines", Kline, "symbol, interval, open_time", topic="klines"),
    AuditTable("signals", Signal, "signal_id", topic="signals"),
    AuditTable("decisions", Decision, "signal_id, action", topic="decisions"),
    AuditTable("orders", Order, "client_order_id, status", topic="orders"),
    AuditTable("fills", Fill, "fill_id", topic="fills"),
    AuditTable("positions", Position, "position_id", version="updated_at", topic="positions"),
    AuditTable("equity", Equity, "ts", topic="equity"),
    AuditTable("alerts", Alert, "alert_id", topic="alerts"),
    AuditTable("rejects", Reject, "stage, topic, partition, offset, reason, cityHash64(raw_b64)", topic="dlq"),
]}

TOPIC_TABLES = {t.topic: t for t in TABLES.values()}
