"""The live ingest's /ready verdict, pure: every shard's WebSocket is connected and its messages keep coming.

Fed by ingest.service (LiveIngest.figures() and the heartbeat its tick loop beats), served by
infra.metrics. Progress here is the streams moving: Binance pushes a kline update about every 250 ms
while a symbol trades, so a connected shard of tens of symbols that goes silent for minutes is a dead
stream, not a quiet market (bars are produced once per interval; the messages say sooner that the
stream still flows). A universe with no symbol to follow has nothing to do: ready.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from infra.probes import Heartbeat, Probe


@dataclass
class StreamWatch:
    """quiet_s: how long a connected shard may go without a message before the ingest is not ready."""
    quiet_s: float = 120.0
    _moved: dict = field(default_factory=dict)    # shard -> (its message count, when it last changed)

    def readiness(self, figures: dict, beat: Heartbeat) -> Probe:
        now = beat.clock()
        shards = figures.get("shard_detail") or {}
        for sid, sh in shards.items():
            last = self._moved.get(sid)
            if last is None or sh["messages"] != last[0]:
                self._moved[sid] = (sh["messages"], now)
        for sid in set(self._moved) - set(shards):     # closed by a reconcile
            del self._moved[sid]
        quiet = {sid: now - since for sid, (_, since) in self._moved.items()}
        down = sorted(sid for sid, sh in shards.items() if not sh["connected"])
        silent = sorted(sid for sid, q in quiet.items() if q > self.quiet_s and sid not in down)
        if figures.get("fatal"):
            ready, why = False, f"fatal: {figures['fatal']}"
        elif not beat.beats:
            ready, why = False, "starting: universe and the klines topic's newest bars not read yet"
        elif not figures.get("symbols"):
            ready, why = True, "no symbol to follow"
        elif down:
            ready, why = False, f"shard(s) {down} not connected"
        elif silent:
            ready, why = False, f"shard(s) {silent}: no message for {max(quiet[s] for s in silent):.0f} s"
        else:
            ready, why = True, "streaming"
        detail = {str(sid): {**sh, "quiet_s": round(quiet[sid], 3)} for sid, sh in sorted(shards.items())}
        return Probe(ready, {"ready": ready, "reason": why, "symbols": figures.get("symbols"),
                             "shards": detail, "quiet_s": self.quiet_s, "produced": figures.get("produced", 0),
                             "backfilled": figures.get("backfilled", 0), "rejected": figures.get("rejected", 0),
                             "delivery_errors": figures.get("delivery_errors", 0)})
