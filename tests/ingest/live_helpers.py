"""Helpers for live-ingest tests: run LiveIngest in a background thread, wait for conditions, read topics."""
from __future__ import annotations

import asyncio
import threading
import time

from schemas import decode_kline, decode_reject


class ServiceThread:
    def __init__(self, svc):
        self.svc = svc
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="live-ingest", daemon=True)

    def _main(self):
        async def main():
            self.loop = asyncio.get_running_loop()
            self.stop_event = asyncio.Event()
            self._ready.set()
            await self.svc.run(self.stop_event)
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
            self._ready.set()

    def __enter__(self):
        self.thread.start()
        self._ready.wait(30)
        return self

    def stop(self, timeout: float = 60):
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "live ingest did not stop"
        if self.error is not None:
            raise self.error

    def __exit__(self, *exc):
        self.stop()


def wait_for(cond, timeout: float = 30.0, what: str = "condition", interval: float = 0.02):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_topic(settings, base: str, group: str, expect: int | None = None, idle_s: float = 2.0,
               timeout: float = 60.0) -> list:
    """All (key, value) of a namespaced topic: until `expect` messages and then idle_s of silence."""
    from infra.kafka_io import consumer, topic
    c = consumer(settings, group)
    c.subscribe([topic(settings, base)])
    out = []
    t0 = last = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            msgs = c.consume(5000, 0.2)
            got = [m for m in msgs if not m.error()]
            if got:
                out += [(m.key(), m.value(), m.partition(), m.offset()) for m in got]
                last = time.monotonic()
            elif (expect is None or len(out) >= expect) and time.monotonic() - last >= idle_s:
                break
    finally:
        c.close()
    return out


def klines_of(records) -> list:
    return [decode_kline(v) for _, v, _, _ in records]


def rejects_of(records) -> list:
    return [decode_reject(v) for _, v, _, _ in records]
