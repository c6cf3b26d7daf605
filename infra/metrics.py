"""Prometheus endpoints (prometheus-client) for the long-running processes: figures they keep anyway.

A process hands `serve` a function that returns its current figures (the processors worker's stats dict,
the executor's RunStats); every scrape reads them then, so there is one count per figure, kept where the
work is done, and the endpoint never holds a copy that could drift. Off unless SMC_METRICS_PORT is set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


@dataclass(frozen=True)
class Figure:
    key: str             # the key in the figures dict
    help: str
    counter: bool = True


class FiguresCollector:
    """Counters and gauges from `read()`'s dict; `labelled(figures)` adds labelled families (per partition)."""

    def __init__(self, prefix: str, read: Callable[[], Mapping], figures: Iterable[Figure],
                 labelled: Callable[[Mapping], Iterable[Metric]] | None = None) -> None:
        self.prefix, self.read, self.figures, self.labelled = prefix, read, tuple(figures), labelled

    def collect(self) -> Iterable[Metric]:
        values = dict(self.read())
        for f in self.figures:
            family = CounterMetricFamily if f.counter else GaugeMetricFamily
            yield family(f"{self.prefix}_{f.key}", f.help, value=float(values.get(f.key) or 0))
        if self.labelled is not None:
            yield from self.labelled(values)


class MetricsServer:
    def __init__(self, port: int, collector: FiguresCollector, addr: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self._httpd, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        self.port = self._httpd.server_address[1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def serve(port: int, collector: FiguresCollector, addr: str = "127.0.0.1") -> MetricsServer:
    """The endpoint http://addr:port/metrics, served from a daemon thread."""
    return MetricsServer(port, collector, addr)


