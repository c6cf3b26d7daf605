"""Pure sharding plan: symbols -> shards (one WebSocket connection each).

A plan is a dict shard_id -> frozenset of symbols. The initial plan chunks the sorted universe into
shards of `per_shard` symbols (default 50; never more than `max_streams` streams per connection).
`rebalance` keeps every existing assignment (stability: a listing never reshuffles other shards):
delisted symbols leave their shard, new listings fill the least-loaded shard below `per_shard`, and
a new shard opens only when all are full. Empty shards are closed. The diff says what each
connection has to change.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_STREAMS_PER_CONNECTION = 200

Plan = dict[int, frozenset[str]]


def _capacity(per_shard: int, max_streams: int, streams_per_symbol: int) -> int:
    if per_shard < 1:
        raise ValueError(f"per_shard must be >= 1, got {per_shard}")
    cap = max_streams // max(1, streams_per_symbol)
    if cap < 1:
        raise ValueError(f"max_streams={max_streams} cannot hold {streams_per_symbol} streams per symbol")
    return min(per_shard, cap)


def plan_shards(symbols, per_shard: int = 50, max_streams: int = MAX_STREAMS_PER_CONNECTION,
                streams_per_symbol: int = 1) -> Plan:
    size = _capacity(per_shard, max_streams, streams_per_symbol)
    ordered = sorted(set(symbols))
    return {i: frozenset(ordered[j:j + size]) for i, j in enumerate(range(0, len(ordered), size))}


@dataclass
class ShardDiff:
    added: dict[int, frozenset[str]] = field(default_factory=dict)     # shard -> symbols joining
    removed: dict[int, frozenset[str]] = field(default_factory=dict)   # shard -> symbols leaving
    opened: list[int] = field(default_factory=list)                    # new shards (new connections)
    closed: list[int] = field(default_factory=list)                    # emptied shards (close connection)

    @property
    def changed(self) -> list[int]:
        """Existing shards whose stream list changes (not opened, not closed)."""
        ids = set(self.added) | set(self.removed)
        return sorted(ids - set(self.opened) - set(self.closed))

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.opened or self.closed)


def rebalance(plan: Plan, symbols, per_shard: int = 50, max_streams: int = MAX_STREAMS_PER_CONNECTION,
              streams_per_symbol: int = 1) -> tuple[Plan, ShardDiff]:
    size = _capacity(per_shard, max_streams, streams_per_symbol)
    target = set(symbols)
    diff = ShardDiff()
    new: dict[int, set[str]] = {}
    for sid, members in plan.items():
        keep = set(members) & target
        gone = frozenset(members) - keep
        if gone:
            diff.removed[sid] = gone
        new[sid] = keep
    present = set().union(*new.values()) if new else set()
    next_id = max(plan, default=-1) + 1
    joined: dict[int, set[str]] = {}
    for sym in sorted(target - present):
        open_ids = [sid for sid, m in new.items() if len(m) < size]
        if open_ids:
            sid = min(open_ids, key=lambda i: (len(new[i]), i))
        else:
            sid = next_id
            next_id += 1
            new[sid] = set()
            diff.opened.append(sid)
        new[sid].add(sym)
        joined.setdefault(sid, set()).add(sym)
    diff.added = {sid: frozenset(s) for sid, s in joined.items()}
    for sid in list(new):
        if not new[sid]:
            del new[sid]
            if sid in plan:
                diff.closed.append(sid)
    return {sid: frozenset(m) for sid, m in sorted(new.items())}, diff


def streams_for(symbols, interval: str = "1m") -> list[str]:
    """Binance stream names (lowercase symbols): btcusdt@kline_1m."""
    return [f"{s.lower()}@kline_{interval}" for s in sorted(symbols)]


def stream_url(ws_url: str, symbols, interval: str = "1m") -> str:
    """{ws_url}/stream?streams=a@kline_1m/b@kline_1m (combined streams)."""
    return f"{ws_url.rstrip('/')}/stream?streams=" + "/".join(streams_for(symbols, interval))
