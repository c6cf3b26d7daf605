"""The processors worker's endpoints: its stats dict (processors/app.py) read at each scrape for /metrics,
and the probes behind /health (the stats timer goes round) and /ready (processors.health.readiness)."""
from __future__ import annotations

from typing import Callable, Mapping

from prometheus_client.core import GaugeMetricFamily

from infra.metrics import Figure, FiguresCollector
from infra.probes import Heartbeat, Probe, liveness
from processors.health import ProgressWatch, partition_lag, readiness

ALIVE_MAX_AGE_S = 30.0    # the stats timer ticks every 0.5 s: 30 s without a tick is a stuck event loop
STARTUP_S = 600.0         # timers start once the tables are recovered: a large changelog takes minutes
STALL_S = 120.0           # positions may stay put this long while records wait (as the supervisor's watch)

FIGURES = (
    Figure("klines", "klines taken (processed or rejected)"),
    Figure("signals", "signals produced"),
    Figure("rejects", "klines sent to the dlq"),
    Figure("redelivered", "klines the state held already (identical re-delivery: no signal, no dead letter)"),
    Figure("held_back", "klines held back for an offset gap (they come again after the seek back)"),
    Figure("seeks", "seeks back to a partition's expected offset"),
    Figure("rebalances", "partition assignments completed"),
    Figure("batches", "batches processed"),
    Figure("process_s", "seconds spent processing batches"),
    Figure("deliver_s", "seconds spent making groups durable"),
    Figure("partitions", "klines partitions assigned", counter=False),
    Figure("delivering_for_s", "seconds the current delivery has waited for the broker (0 = none waiting)",
           counter=False),
)


def _lag_families(stats: Mapping):
    lag = GaugeMetricFamily("smc_processors_partition_lag", "klines records left to take, per partition held",
                            labels=["partition"])
    position = GaugeMetricFamily("smc_processors_partition_position", "the offset the state expects next",
                                 labels=["partition"])
    end = GaugeMetricFamily("smc_processors_partition_end_offset", "the partition's end as the consumer last saw it",
                            labels=["partition"])
    for p, left in sorted(partition_lag(dict(stats)).items(), key=lambda kv: int(kv[0])):
        if left is not None:
            lag.add_metric([p], left)
            end.add_metric([p], stats["end_offsets"][p])
        expected = (stats.get("positions") or {}).get(p)
        if expected is not None:
            position.add_metric([p], expected)
    yield from (lag, position, end)


def collector(read: Callable[[], Mapping]) -> FiguresCollector:
    return FiguresCollector("smc_processors", read, FIGURES, _lag_families)


def probes(read: Callable[[], Mapping], refreshed: Heartbeat) -> dict[str, Callable[[], Probe]]:
    watch = ProgressWatch(stall_s=STALL_S, file_stale_s=ALIVE_MAX_AGE_S)
    return {"/health": lambda: liveness(refreshed, ALIVE_MAX_AGE_S, STARTUP_S),
            "/ready": lambda: readiness(watch, dict(read()), refreshed)}
