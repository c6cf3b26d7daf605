"""Test harness for the stream processors: real klines into the real broker, a real Faust worker process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from infra import kafka_io
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


class Worker:
    """`python -m processors worker` as a child process with the test's settings."""

    def __init__(self, settings: Settings, name: str = "w1", model_path: str = "") -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir) / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({
            "SMC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "SMC_NAMESPACE": settings.namespace,
            "SMC_PARTITIONS": str(settings.partitions), "SMC_INTERVAL": settings.interval,
            "SMC_HTF_FACTOR": str(settings.htf_factor), "SMC_DATA_DIR": str(self.data_dir),
            "SMC_MODEL_PATH": model_path, "SMC_STRATEGY_VERSION": settings.strategy_version,
            "SMC_STATS_FILE": str(self.data_dir / "stats.json"),
        })
        self.log = open(self.data_dir / "worker.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "processors", "worker", "--loglevel", os.environ.get("SMC_TEST_WORKER_LOGLEVEL", "warning")], env=env, cwd=REPO_ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def stats_file(self) -> Path:
        return self.data_dir / "stats.json"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode

    def logs(self) -> str:
        return (self.data_dir / "worker.log").read_text(errors="replace")


def wait_signals(settings: Settings, n: int, timeout: float = 180, workers: tuple = ()) -> int:
    deadline = time.monotonic() + timeout
    size = 0
    while time.monotonic() < deadline:
        size = kafka_io.topic_size(settings, "signals")
        if size >= n:
            return size
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {w.proc.returncode}:\n{w.logs()[-3000:]}")
        time.sleep(0.3)
    raise TimeoutError(f"only {size} of {n} signals after {timeout}s")
