"""Live mode (`smc run --live-data`): the backtest's pipeline, continuous, on live Binance market data.

    Binance WS/REST --ingest live--> Kafka `klines` --Faust worker--> `signals`
        --executor (paper | binance testnet | binance live)--> decisions/orders/fills/positions/equity
        --audit sink--> ClickHouse

Every part runs as a child process with the settings' environment (infra.settings.to_env), its log in
<data_dir>/live/<name>.log, as JSON lines (SMC_LOG_FORMAT=json unless the environment chose text; infra/logs.py;
lines a child prints itself, such as its final summary, stay plain text). The supervisor (this module, in the `smc` process):
  * starts/ensures Kafka (BrokerHandle) and the topics, then the children downstream first
    (audit sink, executor, processors worker, live ingest), each in its own session so a terminal
    Ctrl-C reaches only the supervisor, which then stops them in order;
  * every `status_every` s prints a status panel (topic sizes from Kafka, the worker's stats file)
    and writes <data_dir>/live/status.json (the children's PIDs included);
  * restarts a child that dies, with exponential backoff, at most `max_restarts` times per child;
    a child past that makes the whole run stop (exit code 1);
  * on Ctrl-C / SIGTERM / `stop_event`: stops the children in reverse start order (the ingest first),
    letting each consumer drain what its upstream produced (its group caught up, or `drain_s`), with
    SIGTERM then SIGKILL after `stop_timeout`; stops the broker only if it started it. A second
    Ctrl-C kills what is still running.

chDB allows one engine per process: in live mode only the audit sink child opens the store.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from infra import kafka_io
from infra.settings import REPO_ROOT, Settings, to_env
from processors.health import CATCHING_UP, OK, STALLED, UNKNOWN, ProgressWatch

AUDIT_TOPICS = ("klines", "signals", "decisions", "orders", "fills", "positions", "equity", "alerts", "dlq")
STATUS_TOPICS = ("klines", "signals", "decisions", "orders", "fills", "dlq")
LIVE_EXCHANGE = "https://fapi.binance.com"


class LiveError(RuntimeError):
    """A refused configuration or an unavailable part, said plainly."""


# ---- children ---------------------------------------------------------------------------------------
def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Linux: SIGTERM the child when the supervisor dies (no orphans after a kill -9 of `smc`)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class ChildSpec:
    name: str
    argv: list[str]                              # after `python`
    env: dict[str, str] = field(default_factory=dict)
    group: str | None = None                     # Kafka consumer group id to drain before stopping
    drain_topics: tuple[str, ...] = ()


class Child:
    def __init__(self, spec: ChildSpec, log_dir: Path, base_env: dict[str, str]) -> None:
        self.spec = spec
        self.name = spec.name
        self.log_path = log_dir / f"{spec.name}.log"
        self.env = dict(base_env)
        self.env.update(spec.env)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.restarts = 0
        self.started_at = 0.0
        self.restart_at: float | None = None     # a restart is scheduled (backoff)
        self.failed = False                      # out of restarts
        self.exit_codes: list[int] = []
        self.pids: list[int] = []
        self._log = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        if self._log is None:
            self._log = open(self.log_path, "ab")
        self._log.write(self._start_line())
        self._log.flush()
        self.proc = subprocess.Popen([sys.executable, *self.spec.argv], env=self.env, cwd=REPO_ROOT,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        self.starts += 1
        self.started_at = time.monotonic()
        self.restart_at = None
        self.pids.append(self.proc.pid)

    def _start_line(self) -> bytes:
        """The line the supervisor writes before each start: a JSON record when the child logs JSON."""
        what = f"start #{self.starts + 1}: python {' '.join(self.spec.argv)}"
        if self.env.get("SMC_LOG_FORMAT", "").strip().lower() == "json":
            ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            return orjson.dumps({"ts": ts, "level": "INFO", "logger": "smc.live", "process": "supervisor",
                                 "run": self.env.get("SMC_NAMESPACE", ""), "msg": what}) + b"\n"
        return f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n".encode()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code (None if never started)."""
        self.restart_at = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            except ProcessLookupError:
                pass
            self.exit_codes.append(self.proc.returncode)
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def state(self) -> str:
        if self.failed:
            return "failed"
        if self.alive():
            return "running"
        if self.restart_at is not None:
            return f"restart in {max(0.0, self.restart_at - time.monotonic()):.0f}s"
        return "stopped"


def group_lag(settings: Settings, group_id: str, bases: Iterable[str], timeout: float = 10.0) -> int:
    """Records of `bases` not yet committed by consumer group `group_id` (without joining the group)."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group_id, "enable.auto.commit": False,
                  "logger": kafka_io._quiet()})
    try:
        tps = []
        for base in bases:
            name = kafka_io.topic(settings, base)
            md = c.list_topics(name, timeout=timeout)
            parts = md.topics[name].partitions if name in md.topics else {}
            tps += [TopicPartition(name, p) for p in parts]
        lag = 0
        for tp in c.committed(tps, timeout=timeout) if tps else []:
            lo, hi = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=timeout)
            lag += max(0, hi - (tp.offset if tp.offset >= 0 else lo))
        return lag
    finally:
        c.close()


# ---- the supervisor ---------------------------------------------------------------------------------
class LiveSupervisor:
    def __init__(self, settings: Settings, children: Sequence[ChildSpec], console: Console, *,
                 max_restarts: int = 5, backoff_s: float = 2.0, backoff_cap_s: float = 60.0,
                 stop_timeout: float = 30.0, drain_s: float = 20.0, stats_file: Path | None = None,
                 stall_s: float = 180.0) -> None:
        self.settings = settings
        self.console = console
        self.dir = Path(settings.data_dir) / "live"
        self.dir.mkdir(parents=True, exist_ok=True)
        base_env = dict(os.environ)
        base_env.update(to_env(settings))
        base_env["PYTHONUNBUFFERED"] = "1"
        base_env.setdefault("SMC_LOG_FORMAT", "json")     # log files: JSON lines, no terminal colour codes
        self.children = [Child(spec, self.dir, base_env) for spec in children]
        self.max_restarts = max_restarts
        self.backoff = (backoff_s, backoff_cap_s)
        self.stop_timeout = stop_timeout
        self.drain_s = drain_s
        self.stats_file = stats_file
        self.health = ProgressWatch(stall_s=stall_s)   # the processors worker: progress vs end offsets
        self.health_state = (UNKNOWN, "not started")
        self.started = time.monotonic()
        self.force = threading.Event()           # a second Ctrl-C: kill, do not drain

    # -- lifecycle
    def start_all(self) -> None:
        for c in self.children:
            c.start()
            self.console.print(f"  started [cyan]{c.name}[/] (pid {c.pid}), log {c.log_path}")

    def check(self) -> Child | None:
        """Restart dead children (backoff); returns a child that ran out of restarts, else None."""
        now = time.monotonic()
        for c in self.children:
            if c.failed:
                return c
            if c.alive():
                if c.name == "processors":
                    self._check_worker_progress(c, now)
                continue
            if c.restart_at is None:                          # just found dead
                code = c.proc.returncode if c.proc is not None else None
                c.exit_codes.append(code)
                if c.restarts >= self.max_restarts:
                    c.failed = True
                    self.console.print(f"[red]{c.name} exited ({code}) and used its {self.max_restarts} "
                                       f"restarts; stopping.[/] Last log lines:\n{c.tail(1500)}")
                    return c
                delay = min(self.backoff[0] * 2 ** c.restarts, self.backoff[1])
                c.restart_at = now + delay
                self.console.print(f"[yellow]{c.name} exited ({code}); restart {c.restarts + 1}/"
                                   f"{self.max_restarts} in {delay:.0f}s[/] (log {c.log_path})")
            elif now >= c.restart_at:
                c.restarts += 1
                c.start()
                self.console.print(f"  restarted [cyan]{c.name}[/] (pid {c.pid})")
        return None

    def _check_worker_progress(self, c: Child, now: float) -> None:
        """A worker that is alive but does not progress against its input is killed, so check() restarts it
        from the committed state (processors.health). Only its own stats file counts: a restarted worker
        gets time to recover before its first one is written."""
        if self.stats_file is None:
            return
        try:
            age = time.time() - self.stats_file.stat().st_mtime
        except FileNotFoundError:
            age = None
        if age is not None and age > now - c.started_at:
            age = None                                   # the previous process's file
        stats = self.worker_stats() if age is not None else None
        if stats is None and now - c.started_at > self.health.stall_s:
            self.health_state = (STALLED, f"no stats written {now - c.started_at:.0f} s after its start")
        else:
            self.health_state = self.health.verdict(stats, age, now)
        if self.health_state[0] == STALLED:
            self.console.print(f"[red]{c.name} is alive but stalled: {self.health_state[1]}; killing it for a "
                               f"restart from committed state[/]")
            c.kill()
            self.health = ProgressWatch(stall_s=self.health.stall_s)

    def _drain(self, c: Child) -> None:
        """Let a consumer catch up with what its upstream produced: lag 0, or no progress for 3 s."""
        if not c.spec.group or not c.alive() or self.drain_s <= 0:
            return
        deadline = time.monotonic() + self.drain_s
        last, since = None, time.monotonic()
        while time.monotonic() < deadline and c.alive() and not self.force.is_set():
            try:
                lag = group_lag(self.settings, c.spec.group, c.spec.drain_topics)
            except Exception:
                return
            if lag == 0:
                return
            if lag != last:
                last, since = lag, time.monotonic()
            elif time.monotonic() - since >= 3.0:      # transaction markers / a stuck consumer
                return
            time.sleep(0.5)

    def stop_all(self) -> dict[str, int | None]:
        codes = {}
        for c in reversed(self.children):
            if not self.force.is_set():
                self._drain(c)
            codes[c.name] = c.stop(1.0 if self.force.is_set() else self.stop_timeout)
            c.close()
        return codes

    def kill_all(self) -> None:
        for c in self.children:
            c.kill()

    # -- status
    def worker_stats(self) -> dict:
        try:
            return orjson.loads(self.stats_file.read_bytes()) if self.stats_file else {}
        except (FileNotFoundError, orjson.JSONDecodeError):
            return {}

    def counts(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for base in STATUS_TOPICS:
            try:
                out[base] = kafka_io.topic_size(self.settings, base)
            except Exception:
                out[base] = None
        return out

    def snapshot(self) -> dict:
        return {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "namespace": self.settings.namespace,
            "children": {c.name: {"pid": c.pid, "pids": c.pids, "state": c.state(), "restarts": c.restarts,
                                  "exit_codes": c.exit_codes, "log": str(c.log_path)} for c in self.children},
            "topics": self.counts(),
            "worker": self.worker_stats(),
            "worker_health": {"state": self.health_state[0], "detail": self.health_state[1]},
        }

    def write_status(self, snap: dict) -> None:
        tmp = self.dir / "status.json.tmp"
        tmp.write_bytes(orjson.dumps(snap, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.dir / "status.json")

    def render(self, snap: dict) -> Panel:
        procs = Table("part", "pid", "state", "restarts", box=None, pad_edge=False)
        for name, c in snap["children"].items():
            colour = "green" if c["state"] == "running" else "red" if c["state"] == "failed" else "yellow"
            procs.add_row(name, str(c["pid"] or "-"), f"[{colour}]{c['state']}[/]", str(c["restarts"]))
        t, w = snap["topics"], snap["worker"]
        fmt = lambda v: "?" if v is None else f"{v:,}"   # noqa: E731
        flow = Table("klines", "signals", "decisions", "orders", "fills", "rejects (dlq)", "worker klines/signals/rejects",
                     box=None, pad_edge=False)
        flow.add_row(fmt(t.get("klines")), fmt(t.get("signals")), fmt(t.get("decisions")), fmt(t.get("orders")),
                     fmt(t.get("fills")), fmt(t.get("dlq")),
                     f"{w.get('klines', 0):,} / {w.get('signals', 0):,} / {w.get('rejects', 0):,}")
        ns = f" namespace {snap['namespace']}" if snap["namespace"] else ""
        health = snap.get("worker_health") or {}
        colour = {OK: "green", CATCHING_UP: "yellow", STALLED: "red"}.get(health.get("state"), "white")
        worker = f"processors: [{colour}]{health.get('state', '?')}[/] ({health.get('detail', '')})"
        return Panel(Group(procs, "", flow, worker), title=f"SMC-Quant live{ns}  up {snap['uptime_s']:.0f}s",
                     subtitle="Ctrl-C stops", expand=False)


# ---- the entry point --------------------------------------------------------------------------------
def status_verdict(snap: dict | None, age_s: float | None, max_age_s: float) -> tuple[bool, str]:
    """`smc health`: healthy when the supervisor wrote its status lately, every part runs and the
    processors worker is not stalled (processors.health). Pure: the caller reads the file and its age."""
    if snap is None or age_s is None:
        return False, "no live status (is `smc run --live-data` running with this SMC_DATA_DIR?)"
    if age_s > max_age_s:
        return False, f"live status not written for {age_s:.0f} s (the supervisor is not running)"
    down = {name: c.get("state") for name, c in (snap.get("children") or {}).items() if c.get("state") != "running"}
    if down or not snap.get("children"):
        return False, "not running: " + (", ".join(f"{n} {st}" for n, st in sorted(down.items())) or "no parts")
    health = snap.get("worker_health") or {}
    state, detail = health.get("state", UNKNOWN), health.get("detail", "")
    if state == STALLED:
        return False, f"processors stalled: {detail}"
    return True, f"ok: {len(snap['children'])} parts running, processors {state} ({detail}), up {snap.get('uptime_s', 0):.0f} s"


def check_trading(settings: Settings, trade_live: bool) -> list[str]:
    """The executor's arguments for the configured broker; LiveError when the setup is refused."""
    if settings.broker not in ("paper", "binance"):
        raise LiveError(f"unknown broker {settings.broker!r} (SMC_BROKER=paper | binance)")
    if trade_live and settings.broker != "binance":
        raise LiveError("--live trades real money and needs SMC_BROKER=binance; the paper broker has no live mode")
    if trade_live and not settings.live_trading:
        raise LiveError("--live needs SMC_LIVE_TRADING=1 as well: refusing to trade on the real exchange")
    args = ["--broker", settings.broker]
    if settings.broker == "binance":
        if not settings.api_key or not settings.api_secret:
            raise LiveError("the Binance broker needs BINANCE_API_KEY and BINANCE_API_SECRET in the environment")
        if trade_live:
            args.append("--live")
        elif settings.binance_trade_url.rstrip("/") == LIVE_EXCHANGE:
            raise LiveError(f"SMC_BINANCE_TRADE_URL is the live exchange ({LIVE_EXCHANGE}): "
                            "pass --live with SMC_LIVE_TRADING=1, or use the testnet URL")
    return args


def child_specs(settings: Settings, trade_live: bool = False, symbols: Sequence[str] | str | None = None,
                ingest_args: Sequence[str] = (), stats_file: Path | None = None) -> list[ChildSpec]:
    """The four parts, downstream first (stopped in reverse: the ingest first, the audit sink last)."""
    from schemas import topic_name
    ingest = ["-m", "ingest", "live"]
    if symbols:
        ingest += ["--symbols", symbols if isinstance(symbols, str) else ",".join(symbols)]
    ingest += list(ingest_args)
    worker_dir = Path(settings.data_dir) / "live" / "worker"
    worker_dir.mkdir(parents=True, exist_ok=True)
    worker_env = {"SMC_DATA_DIR": str(worker_dir)}
    if stats_file is not None:
        worker_env["SMC_STATS_FILE"] = str(stats_file)
    return [
        ChildSpec("audit", ["-m", "ingest", "audit", "--topics", ",".join(AUDIT_TOPICS)],
                  group=kafka_io.group(settings, "audit-sink"), drain_topics=AUDIT_TOPICS),
        ChildSpec("executor", ["-m", "executor", "run", *check_trading(settings, trade_live)],
                  group=kafka_io.group(settings, "executor"), drain_topics=("signals",)),
        ChildSpec("processors", ["-m", "processors", "worker", "--loglevel", "warning"], env=worker_env,
                  group=topic_name("smc-processors", settings.namespace), drain_topics=("klines",)),   # Faust: app id
        ChildSpec("ingest", ingest),
    ]


def run_live(settings: Settings, console: Console | None = None, trade_live: bool = False,
             symbols: Sequence[str] | str | None = None, stop_event: threading.Event | None = None, *,
             ingest_args: Sequence[str] = (), explicit_broker: bool | None = None, status_every: float = 5.0,
             max_restarts: int = 5, backoff_s: float = 2.0, stop_timeout: float = 30.0, drain_s: float = 20.0) -> int:
    """Run the live pipeline until Ctrl-C / SIGTERM / stop_event. 0: stopped cleanly; 1: a part kept
    dying or could not start; 2: refused configuration.

    ingest_args: extra `python -m ingest live` arguments (e.g. ["--since", ms], ["--grace", "5"]).
    """
    from executor.service import ensure_executor_topics
    from infra.services import BrokerHandle

    console = console or Console()
    stop = stop_event if stop_event is not None else threading.Event()
    live_dir = Path(settings.data_dir) / "live"
    live_dir.mkdir(parents=True, exist_ok=True)
    stats_file = live_dir / "worker.stats.json"
    stats_file.unlink(missing_ok=True)
    try:
        specs = child_specs(settings, trade_live, symbols, ingest_args, stats_file)
    except LiveError as exc:
        console.print(f"[red]refused:[/] {exc}")
        return 2
    where = ("the REAL exchange" if trade_live else
             f"testnet {settings.binance_trade_url}" if settings.broker == "binance" else "the paper broker")
    console.print(f"[bold]Live[/] market data {settings.binance_rest_url} / {settings.binance_ws_url}; "
                  f"trading on {where}" + (f"; symbols {symbols}" if symbols else ""))

    # Ctrl-C / SIGTERM (only the main thread may install handlers: a caller in a thread uses stop_event)
    sup: LiveSupervisor | None = None
    previous = {}

    def on_signal(signum, _frame):
        if stop.is_set() and sup is not None:
            sup.force.set()                      # second Ctrl-C: stop waiting
            sup.kill_all()
        stop.set()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)

    if explicit_broker is None:
        explicit_broker = "SMC_KAFKA_BOOTSTRAP" in os.environ
    broker = None
    rc = 0
    try:
        from infra.clickhouse import ClickHouseUnavailable, check_dsn
        try:   # before anything starts: the audit child would die on it after the broker's start-up
            console.print(f"[bold]ClickHouse[/] {check_dsn(settings.clickhouse_dsn)}")
            broker = BrokerHandle(settings, explicit_broker)
        except (ClickHouseUnavailable, kafka_io.BrokerUnavailable) as exc:
            console.print(f"[red]error:[/] {exc}")
            return 2
        except Exception as exc:
            console.print(f"[red]error:[/] no Kafka broker at {settings.kafka_bootstrap} and none could be started: {exc}")
            return 1
        console.print(f"[bold]Kafka[/] {settings.kafka_bootstrap} ({broker.how}; {broker.found})"
                      + (f", namespace [cyan]{settings.namespace}[/]" if settings.namespace else ""))
        kafka_io.ensure_topics(settings)
        ensure_executor_topics(settings)

        sup = LiveSupervisor(settings, specs, console, max_restarts=max_restarts, backoff_s=backoff_s,
                             stop_timeout=stop_timeout, drain_s=drain_s, stats_file=stats_file)
        try:
            if not stop.is_set():
                sup.start_all()
            snap = sup.snapshot()
            sup.write_status(snap)
            next_status = time.monotonic() + status_every
            with Live(sup.render(snap), console=console, auto_refresh=False, transient=False,
                      redirect_stdout=False, redirect_stderr=False) as panel:
                while not stop.is_set():
                    failed = sup.check()
                    if failed is not None:
                        rc = 1
                        break
                    if time.monotonic() >= next_status:
                        snap = sup.snapshot()
                        sup.write_status(snap)
                        panel.update(sup.render(snap), refresh=True)
                        next_status = time.monotonic() + status_every
                    stop.wait(0.5)
        finally:
            if not console.is_terminal:
                console.line()
            console.print("[bold]stopping[/] " + ", ".join(c.name for c in reversed(sup.children)) + " ...")
            codes = sup.stop_all()
            snap = sup.snapshot()
            sup.write_status(snap)
            console.print(sup.render(snap))
            console.print("stopped: " + ", ".join(f"{n} exit {code}" for n, code in codes.items()))
    except Exception as exc:
        console.print(f"[red]live mode failed:[/] {exc}")
        rc = 1
    finally:
        if broker is not None:
            broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return rc
