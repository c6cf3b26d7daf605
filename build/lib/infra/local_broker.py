"""A real single-node Apache Kafka (KRaft) broker on 127.0.0.1 for machines without a Docker engine.

Maven fetches the broker jars (infra/kafka/pom.xml) from Maven Central once; the launcher formats
KRaft storage, starts the broker with the local Java 17, waits until it answers metadata requests,
reuses one that already runs on the port, and stops it cleanly.

    python -m infra.local_broker start [--port 9092]   # idempotent
    python -m infra.local_broker stop
    python -m infra.local_broker status

Runs share a broker by holding a user slot (`acquire` / `release`, one file per process under
<home>/users): the last user out stops a broker a run started, so no run loses its broker mid-way.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from infra.settings import REPO_ROOT

KAFKA_DIR = REPO_ROOT / "infra" / "kafka"
DEFAULT_HOME = REPO_ROOT / "var" / "kafka"
LIBS = REPO_ROOT / "var" / "kafka-libs"     # shared by every broker home


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def fetch_jars(libs: Path = LIBS) -> Path:
    """Download the Kafka broker jars with Maven (cached in ~/.m2 and in var/kafka-libs)."""
    if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka jars; install it or use docker compose -f infra/kafka.yml up")
    libs.parent.mkdir(parents=True, exist_ok=True)
    tmp = libs.with_name(libs.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["mvn", "-q", "-B", "-f", str(KAFKA_DIR / "pom.xml"), "dependency:copy-dependencies",
                    f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"], check=True)
    tmp.rename(libs)
    return libs


def _write_config(home: Path, port: int) -> Path:
    ctrl = port + 1
    props = home / "server.properties"
    props.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{ctrl}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{ctrl}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={home / 'data'}",
        "num.partitions=6",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=10",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "log.retention.hours=168",
        "log.segment.bytes=67108864",
        "",
    ]))
    (home / "log4j.properties").write_text(
        "log4j.rootLogger=WARN, file\n"
        "log4j.appender.file=org.apache.log4j.FileAppender\n"
        f"log4j.appender.file.File={home / 'broker.log'}\n"
        "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n")
    return props


def wait_ready(bootstrap: str, timeout: float = 60.0) -> None:
    """Block until the broker answers a metadata request."""
    from confluent_kafka.admin import AdminClient
    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "logger": _quiet_logger()})
    last = None
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=2)
            if md.brokers:
                return
        except Exception as exc:  # KafkaException while starting
            last = exc
        time.sleep(0.3)
    raise TimeoutError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s ({last})")


def _quiet_logger():
    import logging
    log = logging.getLogger("smc.kafka.quiet")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def start(port: int = 9092, home: Path = DEFAULT_HOME, heap: str = "512m") -> str:
    """Start (or reuse) the broker; returns the bootstrap address."""
    bootstrap = f"127.0.0.1:{port}"
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    if _port_open(port):
        wait_ready(bootstrap)
        return bootstrap
    libs = fetch_jars()
    props = _write_config(home, port)
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("Java 17 is needed for the local Kafka broker")
    cp = f"{libs}/*"
    if not (home / "data" / "meta.properties").exists():
        cluster_id = uuid.uuid4().hex[:22]
        subprocess.run([java, "-cp", cp, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = open(home / "broker.out", "ab")
    proc = subprocess.Popen(
        [java, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
         f"-Dlog4j.configuration=file:{home / 'log4j.properties'}", "-cp", cp, "kafka.Kafka", str(props)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (home / "broker.pid").write_text(str(proc.pid))
    try:
        wait_ready(bootstrap, timeout=90)
    except TimeoutError:
        stop(home)
        raise
    return bootstrap


def stop(home: Path = DEFAULT_HOME, timeout: float = 30.0) -> bool:
    pidfile = Path(home) / "broker.pid"
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def _launcher_lock(home: Path):
    """Serialises start/acquire and release/stop across processes (two runs starting at once)."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "launcher.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def users(home: Path) -> list[int]:
    """Live processes holding a slot on the broker of `home` (slots of dead processes are dropped)."""
    d = Path(home) / "users"
    live = []
    for f in d.glob("*") if d.is_dir() else []:
        if f.name.isdigit() and _alive(int(f.name)):
            live.append(int(f.name))
        else:
            f.unlink(missing_ok=True)
    return sorted(live)


def acquire(port: int, home: Path, start_if_down: bool = True) -> tuple[str, bool]:
    """Take a user slot for this process; start the broker when it is down. (bootstrap, started here)."""
    home = Path(home)
    with _launcher_lock(home):
        started = False
        if not _port_open(port) and start_if_down:
            start(port, home)
            (home / "started-by-run").write_text(str(os.getpid()))
            started = True
        (home / "users").mkdir(exist_ok=True)
        (home / "users" / str(os.getpid())).touch()
        wait_ready(f"127.0.0.1:{port}")
        return f"127.0.0.1:{port}", started


def release(home: Path) -> bool:
    """Drop this process's slot; the last user stops a broker that a run started. True if stopped."""
    home = Path(home)
    with _launcher_lock(home):
        (home / "users" / str(os.getpid())).unlink(missing_ok=True)
        if users(home) or not (home / "started-by-run").exists():
            return False
        (home / "started-by-run").unlink(missing_ok=True)
        return stop(home)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.local_broker", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["start", "stop", "status", "fetch"])
    ap.add_argument("--port", type=int, default=int(os.environ.get("SMC_KAFKA_PORT", "9092")))
    ap.add_argument("--home", default=os.environ.get("SMC_KAFKA_HOME", str(DEFAULT_HOME)))
    args = ap.parse_args(argv)
    home = Path(args.home)
    if args.command == "fetch":
        print(fetch_jars())
    elif args.command == "start":
        print(start(args.port, home))
    elif args.command == "stop":
        print("stopped" if stop(home) else "not running")
    else:
        up = _port_open(args.port)
        print(f"127.0.0.1:{args.port} {'up' if up else 'down'}")
        return 0 if up else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
