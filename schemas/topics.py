"""The topic registry: names, keys, partitions and cleanup policies, and the per-run namespace.

A namespace prefixes every topic (and consumer group), so a debugging replay or a test runs in its
own isolated set of topics on the same broker: `ns="replay-1"` -> `replay-1.klines`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    key: str
    value: str
    partitions: int
    cleanup: str = "delete"          # delete | compact
    retention_ms: int = 7 * 86_400_000


def registry(partitions: int = 6) -> dict[str, TopicSpec]:
    return {
        "klines": TopicSpec("klines", "symbol", "Kline", partitions),
        "signals": TopicSpec("signals", "symbol", "Signal", partitions),
        "decisions": TopicSpec("decisions", "symbol", "Decision", partitions),
        "orders": TopicSpec("orders", "symbol", "Order", partitions),
        "fills": TopicSpec("fills", "symbol", "Fill", partitions),
        "positions": TopicSpec("positions", "symbol", "Position", partitions, cleanup="compact"),
        "equity": TopicSpec("equity", "account", "Equity", 1),
        "alerts": TopicSpec("alerts", "symbol", "Alert", 1),
        "dlq": TopicSpec("dlq", "stage", "Reject", 1),
        # the executor's own: its snapshot (one key, compacted) and the operator's commands
        "executor-state": TopicSpec("executor-state", "account", "executor snapshot (JSON)", 1, cleanup="compact"),
        "executor-commands": TopicSpec("executor-commands", "cmd", "operator command (JSON)", 1),
    }


def topic_name(base: str, namespace: str = "") -> str:
    return f"{namespace}.{base}" if namespace else base


def group_name(base: str, namespace: str = "") -> str:
    return f"{namespace}.{base}" if namespace else base
