"""The executor's Prometheus figures: its RunStats (executor/service.py), read at each scrape."""
from __future__ import annotations

import dataclasses
from typing import Callable

from infra.metrics import Figure, FiguresCollector

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
