"""The executor's /ready verdict, pure: its consumer loop went round lately and trading is not halted.

Fed by executor.service (the heartbeat its run loop beats, the engine's halt reason, its RunStats);
served by infra.metrics. A halted executor still manages open positions, but takes no new entries
until an operator resumes it: that is not ready.
"""
from __future__ import annotations

from infra.probes import Heartbeat, Probe


def readiness(beat: Heartbeat, max_age_s: float, halted: str | None, stats) -> Probe:
    beat_age_s = beat.age_s()
    if not beat.beats:
        ready, why = False, "consumer loop not started yet"
    elif beat_age_s > max_age_s:
        ready, why = False, f"consumer loop has not gone round for {beat_age_s:.0f} s"
    elif halted:
        ready, why = False, f"trading halted: {halted}"
    else:
        ready, why = True, "consuming"
    return Probe(ready, {"ready": ready, "reason": why, "beat_age_s": round(beat_age_s, 3), "max_age_s": max_age_s,
                         "halted": halted or None, "signals": stats.signals, "batches": stats.batches,
                         "rejects": stats.rejects, "restored": stats.restored,
                         "reconciliations": stats.reconciliations})
