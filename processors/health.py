"""The processors worker's health, as a supervisor reads it: progress against the input's end offsets.

The worker's stats file (processors/app.py, SMC_STATS_FILE) carries, per `klines` partition it holds,
the offset the state expects next (`positions`) and the partition's end as its consumer last saw it
(`end_offsets`). A worker is healthy when it has nothing left to take, or when what it expects next
has moved since the last look; a file that stopped changing means the event loop itself is stuck.
A timer that keeps ticking is not progress: a worker whose agent died still writes its file.
Pure: the supervisor (infra/live.py) feeds it the file and the clock.
"""
from __future__ import annotations

from dataclasses import dataclass, field

OK, CATCHING_UP, STALLED, UNKNOWN = "ok", "catching up", "stalled", "unknown"


def partition_lag(stats: dict) -> dict[str, int | None]:
    """Records left to take per `klines` partition the worker holds; None where the end is not known yet."""
    positions, ends = stats.get("positions") or {}, stats.get("end_offsets") or {}
    out: dict[str, int | None] = {}
    for p, end in ends.items():
        expected = positions.get(p)
        out[p] = None if end is None else max(0, end - (expected if expected is not None else 0))
    return out


def lag(stats: dict) -> int | None:
    """Records left to take over the worker's partitions; None when the ends are not known yet."""
    per = partition_lag(stats)
    return None if any(v is None for v in per.values()) else sum(per.values())


@dataclass
class ProgressWatch:
    """stall_s: how long positions may stay put while records wait; file_stale_s: how old the stats file
    may get (the worker writes it every 0.5 s)."""
    stall_s: float = 120.0
    file_stale_s: float = 30.0
    _last: dict = field(default_factory=dict)
    _since: float | None = None

    def verdict(self, stats: dict | None, file_age_s: float | None, now: float) -> tuple[str, str]:
        if stats is None or file_age_s is None:
            return UNKNOWN, "no stats yet"
        if file_age_s > self.file_stale_s:
            return STALLED, f"stats file not written for {file_age_s:.0f} s (event loop stuck)"
        left = lag(stats)
        positions = stats.get("positions") or {}
        if positions != self._last or self._since is None:
            self._last, self._since = dict(positions), now
        if left is None:
            return UNKNOWN, "end offsets not known yet"
        if left == 0:
            self._since = now
            return OK, "caught up"
        still = now - self._since
        if still > self.stall_s:
            return STALLED, f"{left:,} record(s) waiting and no partition moved for {still:.0f} s"
        return CATCHING_UP, f"{left:,} record(s) to take"
