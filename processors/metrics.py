"""The processors worker's Prometheus figures: its stats dict (processors/app.py), read at each scrape."""
from __future__ import annotations

from typing import Callable, Mapping

from prometheus_client.core import GaugeMetricFamily

from infra.metrics import Figure, FiguresCollector
from processors.health import partition_lag

FIGURES = (
    Figure("klines", "klines taken (processed or rejected)"),
    Figure("signals", "signals produced"),
    Figure("rejects", "klines sent to the dlq"),
    Figure("redelivered", "klines the state held already (identical re-delivery: no signal, no dead letter)"),
    Figure("held_back", "klines held back for an offset gap (they come again after the seek back)"),
    Figure("seeks", "seeks back to a partition's expected offset"),
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
