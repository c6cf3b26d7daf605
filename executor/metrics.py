"""The executor's endpoints: its RunStats (executor/service.py) read at each scrape for /metrics, and the
probes behind /health (the consumer loop goes round) and /ready (executor.health.readiness)."""
from __future__ import annotations

import dataclasses
from typing import Callable

from executor.health import readiness
from infra.metrics import Figure, FiguresCollector
from infra.probes import Heartbeat, Probe, liveness

ALIVE_MAX_AGE_S = 30.0    # a loop round polls 0.2 s; a batch's transaction may take seconds, never this long
STARTUP_S = 120.0         # start-up: fencing, restoring the state, the committed offsets (retried on a fresh broker)

FIGURES = (
    Figure("signals", "signals processed"),
    Figure("orders", "order records produced"),
    Figure("fills", "fill records produced"),
    Figure("alerts", "alert records produced"),
    Figure("rejects", "signals and commands sent to the dlq"),
    Figure("commands", "operator commands applied (flatten, resume)"),
    Figure("batches", "transactions committed"),
    Figure("records", "output records produced"),
)


def collector(read_stats: Callable[[], object]) -> FiguresCollector:
    return FiguresCollector("smc_executor", lambda: {f.name: getattr(read_stats(), f.name)
                                                     for f in dataclasses.fields(read_stats())
                                                     if f.name != "decision_us"}, FIGURES)


def probes(beat: Heartbeat, halted: Callable[[], str],
           read_stats: Callable[[], object]) -> dict[str, Callable[[], Probe]]:
    return {"/health": lambda: liveness(beat, ALIVE_MAX_AGE_S, STARTUP_S),
            "/ready": lambda: readiness(beat, ALIVE_MAX_AGE_S, halted(), read_stats())}
