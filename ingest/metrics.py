"""The live ingest's endpoints: LiveIngest.figures() read at each scrape for /metrics, and the probes
behind /health (the tick loop goes round) and /ready (ingest.health.StreamWatch)."""
from __future__ import annotations

from typing import Callable, Mapping

from ingest.health import StreamWatch
from infra.metrics import Figure, FiguresCollector
from infra.probes import Heartbeat, Probe, liveness

ALIVE_MAX_AGE_S = 30.0    # the tick loop goes round every second
STARTUP_S = 600.0         # the first exchangeInfo is retried with backoff; the newest bars are read from the topic
QUIET_S = 120.0

FIGURES = (
    Figure("received", "WebSocket messages received"),
    Figure("closed", "closed klines parsed"),
    Figure("produced", "klines handed to the producer (live and backfill)"),
    Figure("backfilled", "klines produced from the REST backfill"),
    Figure("duplicates", "identical re-deliveries dropped"),
    Figure("conflicts", "re-deliveries with other numbers than the bar produced (dlq)"),
    Figure("rejected", "records sent to the dlq"),
    Figure("gaps", "backfill jobs started"),
    Figure("unfilled", "bars a backfill asked for and REST did not have"),
    Figure("delivery_errors", "klines the broker did not acknowledge"),
    Figure("rest_requests", "REST requests"),
    Figure("rest_bans", "REST 429 / 418 answers"),
    Figure("ws_connects", "WebSocket connections opened"),
    Figure("ws_disconnects", "WebSocket connections lost"),
    Figure("symbols", "symbols followed", counter=False),
    Figure("shards", "WebSocket shards", counter=False),
    Figure("shards_connected", "WebSocket shards connected now", counter=False),
)


def collector(read: Callable[[], Mapping]) -> FiguresCollector:
    return FiguresCollector("smc_ingest", read, FIGURES)


def probes(read: Callable[[], Mapping], beat: Heartbeat,
           quiet_s: float = QUIET_S) -> dict[str, Callable[[], Probe]]:
    watch = StreamWatch(quiet_s)
    return {"/health": lambda: liveness(beat, ALIVE_MAX_AGE_S, STARTUP_S),
            "/ready": lambda: watch.readiness(dict(read()), beat)}
