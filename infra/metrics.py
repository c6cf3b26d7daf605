"""The HTTP endpoints of the long-running processes: Prometheus /metrics, /health and /ready.

A process hands `serve` a function that returns its current figures (the processors worker's stats dict,
the executor's RunStats); every scrape reads them then, so there is one count per figure, kept where the
work is done, and the endpoint never holds a copy that could drift. /health and /ready call the process's
probes (pure verdicts: infra.probes, processors.health, executor.health) at each request and answer 200
or 503 with the probe's JSON body. Off unless SMC_METRICS_PORT is set.

One WSGI app under the standard library's wsgiref, in a daemon thread: /metrics is prometheus-client's
own WSGI app (make_wsgi_app: content negotiation and compression as prometheus-client does them).
"""
from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from infra.probes import Probe

log = logging.getLogger("smc.metrics")


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


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True            # a hanging client never holds the process at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:   # noqa: A002 - one line per scrape would flood the log
        pass


def _json(start_response, status: str, body: dict) -> list[bytes]:
    raw = json.dumps(body, default=str).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(raw))),
                            ("Cache-Control", "no-store")])
    return [raw]


def endpoints_app(registry: CollectorRegistry, probes: Mapping[str, Callable[[], Probe]]):
    """The WSGI app: /metrics from the registry, each probe's path (/health, /ready) 200 or 503 with its body.
    Probes run one at a time: they may keep state between looks (processors.health.ProgressWatch)."""
    metrics = make_wsgi_app(registry)
    lock = threading.Lock()

    def app(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return metrics(environ, start_response)
        probe = probes.get(path)
        if probe is None:
            return _json(start_response, "404 Not Found", {"error": f"no {path}", "paths": ["/metrics", *probes]})
        try:
            with lock:
                verdict = probe()
        except Exception as exc:       # noqa: BLE001 - a probe that cannot answer must not answer "fine"
            log.exception("probe %s failed", path)
            return _json(start_response, "503 Service Unavailable", {"ok": False, "reason": f"probe failed: {exc!r}"})
        return _json(start_response, "200 OK" if verdict.ok else "503 Service Unavailable", verdict.body)

    return app


class MetricsServer:
    def __init__(self, port: int, collector: FiguresCollector, addr: str = "127.0.0.1",
                 probes: Mapping[str, Callable[[], Probe]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(collector)

        class Server(_ThreadingServer):
            pass
        # an IPv6 address (SMC_METRICS_ADDR=::) needs an AF_INET6 socket; WSGIServer defaults to AF_INET
        Server.address_family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self._httpd = make_server(addr, port, endpoints_app(self.registry, dict(probes or {})), Server,
                                  handler_class=_QuietHandler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"endpoints:{self.port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def serve(port: int, collector: FiguresCollector, addr: str = "127.0.0.1",
          probes: Mapping[str, Callable[[], Probe]] | None = None) -> MetricsServer:
    """http://addr:port/metrics, and each of `probes` at its path ("/health", "/ready"), from a daemon thread."""
    return MetricsServer(port, collector, addr, probes)
