"""Test harness for the stream processors: real klines into the real broker, a real Faust worker process."""
from __future__ import annotations

import os
import signal
import time

import polars as pl

from infra import kafka_io
from infra.services import ProcessorWorker
from infra.settings import REPO_ROOT, Settings
from schemas import Kline, encode_kline, interval_ms

RECORDED = REPO_ROOT / "ingest" / "recorded"


def load_klines(file: str, symbols: list[str] | None = None, limit_per_symbol: int | None = None,
                interval: str = "1h") -> list[Kline]:
    """Recorded bars as Kline messages, in time order across symbols (then symbol)."""
    df = pl.read_parquet(RECORDED / file)
    if "volume" not in df.columns:
        df = df.rename({"quote_volume": "volume"})
    if symbols:
        df = df.filter(pl.col("symbol").is_in(symbols))
    df = df.sort(["symbol", "open_time"])
    if limit_per_symbol:
        df = df.group_by("symbol", maintain_order=True).head(limit_per_symbol)
    df = df.sort(["open_time", "symbol"])
    step = interval_ms(interval)
    return [Kline(symbol=r[0], interval=interval, open_time=r[1], close_time=r[1] + step - 1, open=r[2], high=r[3],
                  low=r[4], close=r[5], volume=r[6], source="replay", received_at=r[1] + step)
            for r in df.select(["symbol", "open_time", "open", "high", "low", "close", "volume"]).iter_rows()]


def produce(settings: Settings, klines: list, raw_extra: list[tuple[bytes, bytes]] = ()) -> None:
    prod = kafka_io.producer(settings)
    name = kafka_io.topic(settings, "klines")
    for k in klines:
        while True:
            try:
                prod.produce(name, key=k.symbol.encode(), value=encode_kline(k))
                break
            except BufferError:      # local queue full: let deliveries drain
                prod.poll(0.1)
        prod.poll(0)
    for key, raw in raw_extra:
        prod.produce(name, key=key, value=raw)
    assert prod.flush(60) == 0


class Worker(ProcessorWorker):
    """The service launcher (infra.services.ProcessorWorker) with the test's settings, plus SIGKILL.

    model_path "" = the heuristic scorer, so the expected signals can be computed without the model.
    """

    def __init__(self, settings: Settings, name: str = "w1", model_path: str = "", extra_env: dict | None = None,
                 command: list[str] | None = None) -> None:
        super().__init__(settings.with_(model_path=model_path), name, extra_env=extra_env,
                         loglevel=os.environ.get("SMC_TEST_WORKER_LOGLEVEL", "warning"), command=command)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)



def check_alive(workers: tuple) -> None:
    for w in workers:
        if not w.alive():
            raise RuntimeError(f"worker exited with {w.proc.returncode}:\n{w.tail()}")


def wait_until(condition, what: str, workers: tuple = (), timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        check_alive(workers)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout}s; stats {[w.stats() for w in workers]}")
        time.sleep(0.2)


def taken_everything(settings: Settings, workers: tuple) -> bool:
    """The workers' states together expect, on every `klines` partition, its end offset: each record
    is processed (re-sent signals make the signals topic long enough before that)."""
    ends = kafka_io.end_offsets(settings, "klines")
    positions: dict = {}
    for w in workers:
        positions.update(w.stats().get("positions") or {})
    return all(positions.get(str(p)) == high for p, (low, high) in ends.items() if high > low)


def wait_signals(settings: Settings, n: int, timeout: float = 180, workers: tuple = (), all_taken: bool = False) -> int:
    """Until the signals topic holds n records and, with all_taken, the workers have taken every kline
    (a count alone ends too early after a restart: re-sent copies make up the number)."""
    size = 0

    def enough() -> bool:
        nonlocal size
        size = kafka_io.topic_size(settings, "signals")
        return size >= n and (not all_taken or taken_everything(settings, workers))
    try:
        wait_until(enough, f"{n} signals", workers, timeout)
    except TimeoutError:
        raise TimeoutError(f"only {size} of {n} signals after {timeout}s (or klines left untaken)") from None
    return size
