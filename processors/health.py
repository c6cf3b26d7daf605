"""The processors worker's health, as a supervisor reads it: progress against the input's end offsets.

The worker's stats file (processors/app.py, SMC_STATS_FILE) carries, per `klines` partition it holds,
the offset the state expects next (`positions`) and the partition's end as its consumer last saw it
(`end_offsets`). A worker is healthy when it has nothing left to take, or when what it expects next
has moved since the last look; a file that stopped changing means the event loop itself is stuck.
A timer that keeps ticking is not progress: a worker whose agent died still writes its file.
Pure: the supervisor (infra/live.py) feeds it the file and the clock; the worker's own /ready endpoint
(`readiness`, served by infra.metrics) feeds it the live stats dict and the age of their last refresh.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from infra.probes import Heartbeat, Probe

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
    """stall_s: how long positions may stay put while records wait; file_stale_s: how old the stats (the
    file, or in-process the dict) may get (the worker refreshes them every 0.5 s)."""
    stall_s: float = 120.0
    file_stale_s: float = 30.0
    _last: dict = field(default_factory=dict)
    _since: float | None = None

    def verdict(self, stats: dict | None, file_age_s: float | None, now: float) -> tuple[str, str]:
        if stats is None or file_age_s is None:
            return UNKNOWN, "no stats yet"
        if file_age_s > self.file_stale_s:
            return STALLED, f"stats not refreshed for {file_age_s:.0f} s (event loop stuck)"
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

    def still_s(self, now: float) -> float | None:
        """Seconds since the positions last moved (or the worker was last caught up); None before a look."""
        return None if self._since is None else max(0.0, now - self._since)


def readiness(watch: ProgressWatch, stats: dict, refreshed: Heartbeat) -> Probe:
    """The worker's /ready: ready while it is caught up or its positions move (ProgressWatch). Never before
    the stats timer first refreshed positions and end offsets (it runs once the tables are recovered), nor
    before the first assignment: an empty position map then is not "nothing to do". The body carries the
    verdict and the figures behind it. `refreshed` is beaten by the stats timer; its clock is the watch's."""
    now, stats_age_s = refreshed.clock(), refreshed.age_s()
    if not refreshed.beats:
        state, why = UNKNOWN, "starting: positions not read yet (tables recovering)"
    elif not stats.get("rebalances"):
        state, why = UNKNOWN, "no partition assignment yet"
    else:
        state, why = watch.verdict(stats, stats_age_s, now)
    ready = state in (OK, CATCHING_UP)
    still = watch.still_s(now)
    return Probe(ready, {"ready": ready, "state": state, "reason": why, "lag": lag(stats),
                         "partition_lag": partition_lag(stats), "positions": stats.get("positions") or {},
                         "end_offsets": stats.get("end_offsets") or {}, "partitions": stats.get("partitions", 0),
                         "rebalances": stats.get("rebalances", 0), "stats_age_s": round(stats_age_s, 3),
                         "unmoved_s": None if still is None else round(still, 3), "stall_s": watch.stall_s})
