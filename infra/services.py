"""Starting and stopping the parts as processes: the broker, Faust workers, the live ingest, the sink."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from infra import local_broker
from infra.kafka_io import BrokerUnavailable, require_broker
from infra.settings import REPO_ROOT, Settings, to_env


def docker_engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class BrokerHandle:
    """Kafka for the main job: the one configured, else docker compose, else the local KRaft broker."""

    def __init__(self, settings: Settings, explicit: bool) -> None:
        self.settings = settings
        self.holds_slot = False
        self.how = "configured"
        if explicit:   # the user named it: it answers within seconds or the run stops here, with the fix
            self.found = require_broker(settings)
            return
        host, port = settings.kafka_bootstrap.rsplit(":", 1)
        self.home = Path(settings.data_dir) / "kafka"
        if local_broker._port_open(int(port), host):
            # maybe another run's local broker: take a slot so that run does not stop it under us
            local_broker.acquire(int(port), self.home, start_if_down=False)
            self.holds_slot = True
            self.how = "already running"
        elif docker_engine_available():
            subprocess.run(["docker", "compose", "-f", str(REPO_ROOT / "infra" / "kafka.yml"), "up", "-d", "--wait"],
                           check=True)
            local_broker.wait_ready(settings.kafka_bootstrap, timeout=120)
            self.how = "docker compose"
        else:
            _, started = local_broker.acquire(int(port), self.home)
            self.holds_slot = True
            self.how = "local KRaft broker (Maven Central jars)" if started else "already running"
        try:
            self.found = require_broker(settings)   # what answers, with its version, for the start-up log
        except BrokerUnavailable:
            self.stop()
            raise

    def stop(self) -> None:
        """Release this run's slot: the broker stops only when no other run uses it (and a run started it)."""
        if self.holds_slot:
            local_broker.release(self.home)
            self.holds_slot = False


class ProcessorWorker:
    """`python -m processors worker` as a child process with the given settings."""

    def __init__(self, settings: Settings, name: str = "worker", extra_env: dict | None = None,
                 loglevel: str = "warning", command: list[str] | None = None) -> None:
        """command: what to run instead of `python -m processors worker --loglevel L` (tests' fault wrappers)."""
        self.dir = Path(settings.data_dir) / "workers" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(to_env(settings.with_(data_dir=str(self.dir))))
        env["SMC_STATS_FILE"] = str(self.stats_file)
        self.stats_file.unlink(missing_ok=True)   # a previous worker's figures must not satisfy our waits
        env.update(extra_env or {})
        self.log_path = self.dir / "worker.log"
        self._log = open(self.log_path, "wb")
        command = command or [sys.executable, "-m", "processors", "worker", "--loglevel", loglevel]
        self.proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def stats_file(self) -> Path:
        return self.dir / "stats.json"

    def stats(self) -> dict:
        try:
            return orjson.loads(self.stats_file.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return {"klines": 0, "signals": 0, "rejects": 0, "batches": 0, "partitions": 0}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def wait_klines(self, n: int, timeout: float = 3600, on_progress=None) -> dict:
        """Block until the worker has consumed n klines (processed or rejected)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if on_progress:
                on_progress(st)
            if st["klines"] >= n:
                return st
            if not self.alive():
                raise RuntimeError(f"the processors worker exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"processors consumed {st['klines']} of {n} klines in {timeout:.0f}s")
            time.sleep(0.25)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode
