"""`smc backtest`: the main job's code, in one process — no broker, no Faust.

    recorded klines (one UTC day at a time) --KlineProcessor--> signals --EventTimeMerge--> Engine (paper)
        --> decisions/orders/fills/positions/equity --> ClickHouse (the run's own database) --> report

The same objects as `smc run` (infra/pipeline.py), wired directly:
* klines in the replay's order ((open_time, symbol), ingest.replay.load_klines / frame_to_klines), encoded
  as the replay encodes them and fed to the processors' functional core (processors.core.KlineProcessor,
  the object the Faust agent calls, built with the same arguments, with in-memory tables);
* each signal goes to the partition its key (the symbol) takes on the `signals` topic (murmur2, as the
  Java client / aiokafka / our producers map it), in the order the worker emits it: the Faust worker
  keeps per-partition order, and klines and signals are co-partitioned, so a signals partition holds
  exactly its klines partition's outputs in order;
* the executor's own EventTimeMerge releases them across partitions (a k-way merge by (close_time,
  symbol, timeframe); releasing in smaller steps does not change what a k-way merge emits), then the
  executor's decode_signal and Engine (built by ExecutorService, so the same config, paper broker,
  instruments, exits, sizing and accounting);
* the records go to the same audit tables through AuditStore.insert, and infra.report builds the report.
`wall_ts` (the decision's wall time, latency only) is 0 here: there is no latency to measure in process.
tests/pipeline/test_backtest_equals_run.py runs both on the same data and compares every record.

Memory: the input is read one UTC day at a time; the state is the processors' per-symbol state and the
engine's; records go to ClickHouse in batches (or are only counted with audit=False).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import orjson
from aiokafka.partitioner import murmur2

from infra.pipeline import BacktestPlan, PipelineError, RunResult
from infra.settings import REPO_ROOT, Settings, to_env

DAY_MS = 86_400_000


def signal_partition(symbol: str, partitions: int) -> int:
    """The partition a record keyed by `symbol` takes: Kafka's default (murmur2) partitioner."""
    return (murmur2(symbol.encode()) & 0x7FFFFFFF) % partitions


class _Record:
    """The part of a consumed message EventTimeMerge and the executor read."""

    __slots__ = ("_topic", "_partition", "_key", "_value")

    def __init__(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        self._topic, self._partition, self._key, self._value = topic, partition, key, value

    def error(self):
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


@dataclass
class Outputs:
    """What a run produced, per audit topic (base name) in production order: (key, value bytes)."""
    keep: bool = False
    records: dict[str, list[tuple[bytes | None, bytes]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.counts[topic] = self.counts.get(topic, 0) + 1
        if self.keep:
            self.records.setdefault(topic, []).append((key, value))


def day_chunks(plan: BacktestPlan) -> Iterator[tuple[int, int]]:
    """[start, end) windows of one UTC day covering the plan's period."""
    t = plan.start - plan.start % DAY_MS
    while t < plan.end:
        yield max(t, plan.start), min(t + DAY_MS, plan.end)
        t += DAY_MS


class _BatchRow:
    """One row of the batch engine's frame, read like the stream's BarOutput by processors.core.signal_bytes."""

    __slots__ = ("timeframe", "open_time", "open", "high", "low", "close", "volume", "atr", "features", "setup",
                 "events", "_events")

    def __init__(self, tf, t, o, h, l, c, v, atr, events: str, features, side, entry, stop, target) -> None:
        from processors.smc.setup import Setup
        self.timeframe, self.open_time, self.open, self.high, self.low, self.close, self.volume, self.atr = \
            tf, t, o, h, l, c, v, atr
        self._events = events.encode()
        self.events = {} if events == "{}" else True   # signal_bytes: the empty dict, or events_json()
        self.features = features
        self.setup = Setup(side, entry, stop, target)

    def events_json(self) -> bytes:
        return self._events


def batch_signal_sequence(df, symbol: str, proc) -> Iterator[tuple[int, bytes]]:
    """One symbol's signals from the numba batch engine, in the order the stream emits them: per base bar
    its base signal, then the HTF bars that bar closes. -> (open_time of the emitting base bar, bytes).
    Byte-identical to KlineProcessor's (the forms share their arithmetic; tests/smc/test_forms_agree.py)."""
    import numpy as np
    from processors.core import signal_bytes
    from processors.smc import FEATURE_NAMES, compute_batch_all
    from processors.smc.batch import _arrays, aggregate_htf
    cfg = proc.config
    bars = df.select(["open_time", "open", "high", "low", "close", "volume"])
    frames = compute_batch_all(bars, cfg)
    _, close_idx = aggregate_htf(_arrays(bars), cfg.interval_ms, cfg.htf_factor)
    base_times = bars["open_time"].to_list()
    (base_tf, base), (htf_tf, htf) = frames.items()

    def rows(tf, frame):
        feats = np.ascontiguousarray(frame.select(list(FEATURE_NAMES)).to_numpy(), dtype=np.float64)
        conf = proc.scorer.score(feats) if len(feats) else np.zeros(0)
        cols = frame.select(["open_time", "open", "high", "low", "close", "volume", "atr", "events",
                             "setup_side", "setup_entry", "setup_stop", "setup_target"]).iter_rows()
        for (t, o, h, l, c, v, atr, ev, side, en, st, tg), f, p in zip(cols, feats.tolist(), conf.tolist()):
            yield signal_bytes(symbol, _BatchRow(tf, t, o, h, l, c, v, atr, ev, f, side, en, st, tg), p,
                               proc.scorer.version, proc.strategy_version)

    htf_rows = rows(htf_tf, htf)
    closes = close_idx.tolist()
    k = 0
    for i, raw in enumerate(rows(base_tf, base)):
        yield base_times[i], raw
        while k < len(closes) and closes[k] == i:
            yield base_times[i], next(htf_rows)
            k += 1


def execute_signals(engine, signals, emit) -> None:
    """The executor service's per-signal step without Kafka: engine.process, each record to emit(topic base,
    key, value bytes, record) with the service's keys (symbol; "account" for equity)."""
    from executor.service import OUTPUT_TOPICS
    from schemas.codec import encode
    from schemas.trading import Equity
    for sig in signals:
        for r in engine.process(sig, wall_ts=0):
            emit(OUTPUT_TOPICS[type(r)], b"account" if isinstance(r, Equity) else r.symbol.encode(), encode(r), r)


def _tagged(symbol: str, seq) -> Iterator[tuple[int, str, bytes]]:
    for t, raw in seq:
        yield t, symbol, raw


def run_in_process(settings: Settings, plan: BacktestPlan, *, sink: Callable[[str, list], None] | None = None,
                   keep: bool = False, chunks: Iterator[tuple[int, int]] | None = None,
                   engine_form: str = "stream", cfg=None, released: list | None = None) -> tuple[Outputs, dict]:
    """Run the plan through the processors' core and the executor engine. engine_form "stream": the
    processors' KlineProcessor one UTC day at a time (flat input memory; bad rows to the dlq as in smc run);
    "batch": the numba batch engine per symbol over the whole period (byte-identical signals, ~8x faster;
    needs clean input, else PipelineError). cfg: the ExecutorConfig (default: from the environment, as the
    executor service). released: when given, the decoded signals are collected there in the executor's
    order instead of being executed (a sweep runs many engines over them: execute_signals). sink(table_base, messages) gets
    the decoded messages per audit topic in batches (None: not stored). keep: Outputs holds every record's
    bytes (the equality test). -> (outputs, timings)."""
    from executor.service import ExecutorService
    from infra.kafka_io import topic as topic_name
    from ingest.replay import ReplayError, frame_to_klines, load_klines
    from processors.core import KlineProcessor, MemoryTables, open_time_limit
    from processors.scoring import load_scorer
    from schemas import decode_kline, encode_kline, make_reject
    from schemas.codec import encode
    from schemas.signal import decode_signal

    out = Outputs(keep=keep)
    t = {"read_s": 0.0, "processors_s": 0.0, "executor_s": 0.0, "sink_s": 0.0}
    proc = KlineProcessor(load_scorer(settings.model_path), settings.strategy_version, settings.interval,
                          settings.htf_factor,
                          time_limit=open_time_limit(settings.interval, settings.replay_end, lambda: int(time.time() * 1000)),
                          universe=[x for x in settings.universe.split(",") if x] or None)   # as processors/app.py
    tables = MemoryTables()
    svc = ExecutorService(settings, cfg)   # builds the engine, paper broker and instruments; no Kafka until start()
    engine = svc.engine
    merge = svc.merge
    signals_topic = topic_name(settings, "signals")
    merge.set_partitions(list(range(settings.partitions)))
    parts: dict[str, int] = {}
    pending: dict[str, list] = {}

    def emit(base: str, key, value: bytes, msg) -> None:
        out.add(base, key, value)
        if sink is not None:
            pending.setdefault(base, []).append(msg)

    def execute(msgs) -> None:
        t0 = time.perf_counter()
        sigs = [decode_signal(m.value()) for m in msgs]
        if released is not None:
            released.extend(sigs)
        else:
            execute_signals(engine, sigs, emit)
        t["executor_s"] += time.perf_counter() - t0

    def execute_and_drain(msgs) -> None:
        """Execute released signals, then hand everything emitted so far to the audit sink, in topic order."""
        execute(msgs)
        if sink is not None:
            t0 = time.perf_counter()
            for base, records in pending.items():
                sink(base, records)
            pending.clear()
            t["sink_s"] += time.perf_counter() - t0

    if engine_form == "batch":
        import heapq
        from processors.smc import BadBar
        t0 = time.perf_counter()
        try:
            df = load_klines(plan.files, plan.symbols, plan.start, plan.end, plan.interval)
        except ReplayError as exc:
            raise PipelineError(str(exc)) from None
        if sink is not None or keep:
            for item in frame_to_klines(df, plan.interval):
                if isinstance(item, tuple):
                    raise PipelineError(f"invalid kline {item[0]}: {item[1]} (the batch form needs clean input; "
                                        "use the stream form, which sends it to the dlq)")
                raw = encode_kline(item)
                emit("klines", item.symbol.encode(), raw, None if sink is None else decode_kline(raw))
        else:
            out.counts["klines"] = df.height
        seqs = []
        for (sym,), d in df.group_by("symbol", maintain_order=True):
            seqs.append(_tagged(sym, batch_signal_sequence(d, sym, proc)))
        del df
        t["read_s"] += time.perf_counter() - t0
        batch = []
        t1 = time.perf_counter()
        try:
            for _, sym, raw in heapq.merge(*seqs, key=lambda x: (x[0], x[1])):
                p = parts.get(sym)
                if p is None:
                    p = parts[sym] = signal_partition(sym, settings.partitions)
                key = sym.encode()
                batch.append(_Record(signals_topic, p, key, raw))
                emit("signals", key, raw, None if sink is None else decode_signal(raw))
                if len(batch) >= 20_000:
                    merge.add(batch)
                    batch = []
                    t["processors_s"] += time.perf_counter() - t1
                    execute_and_drain(merge.release(flush=False, limit=1 << 62))
                    t1 = time.perf_counter()
        except BadBar as exc:
            raise PipelineError(f"{exc} (the batch form needs clean input; use the stream form)") from None
        merge.add(batch)
        t["processors_s"] += time.perf_counter() - t1
    for start, end in (() if engine_form == "batch" else chunks if chunks is not None else day_chunks(plan)):
        t0 = time.perf_counter()
        try:
            df = load_klines(plan.files, plan.symbols, start, end, plan.interval)
        except ReplayError:
            continue                      # a day without bars (a gap in the data)
        records = []
        for item in frame_to_klines(df, plan.interval):
            if isinstance(item, tuple):
                row, exc = item
                raw = orjson.dumps(row)
                emit("dlq", (row.get("symbol") or "").encode() or None, raw,
                     make_reject("ingest.replay", str(exc), raw, row.get("symbol"), 0))
                continue
            raw = encode_kline(item)
            key = item.symbol.encode()
            records.append((key, raw))
            emit("klines", key, raw, None if sink is None else decode_kline(raw))
        del df
        t1 = time.perf_counter()
        t["read_s"] += t1 - t0
        res = proc.process(records, tables)
        tables.apply(res)
        batch = []
        for sym, raw in res.signals:
            p = parts.get(sym)
            if p is None:
                p = parts[sym] = signal_partition(sym, settings.partitions)
            batch.append(_Record(signals_topic, p, sym.encode(), raw))
            emit("signals", sym.encode(), raw, None if sink is None else decode_signal(raw))
        for reason, key, raw in res.rejects:
            rej = make_reject("processors", reason, raw, key, 0)
            emit("dlq", key, encode(rej), rej)
        t["processors_s"] += time.perf_counter() - t1
        merge.add(batch)
        execute_and_drain(merge.release(flush=False, limit=1 << 62))
    execute_and_drain(merge.release(flush=True, limit=1 << 62))
    svc.broker.close()
    out.counts.setdefault("orders", 0)
    return out, t


def run_backtest_in_process(settings: Settings, plan: BacktestPlan, *, console=None, report_dir: str | None = None,
                            database: str | None = None, audit: bool = True, engine_form: str = "batch") -> RunResult:
    """`smc backtest`: run_in_process into the run's own ClickHouse database, then the main job's report."""
    from rich.console import Console
    from infra.clickhouse import AuditStore, exclusive, run_database
    from infra.report import build_report
    from schemas.audit import TOPIC_TABLES

    console = console or Console()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    ns = settings.namespace or f"bk-{stamp}"
    run_dir = Path(settings.data_dir) / "runs" / ns
    settings = settings.with_(namespace=ns, interval=plan.interval, data_dir=str(run_dir), replay_end=plan.end,
                              universe=",".join(plan.symbols))     # as infra.pipeline.run_backtest
    database = database or run_database(ns)
    result = RunResult(namespace=ns, plan=plan, database=database)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "settings.env.json").write_bytes(orjson.dumps(to_env(settings), option=orjson.OPT_INDENT_2))
    t0 = time.monotonic()
    if not audit:
        outputs, timings = run_in_process(settings, plan, engine_form=engine_form)
        result.counts = dict(outputs.counts)
        result.timings = {**timings, "total_s": time.monotonic() - t0}
        return result
    with exclusive(settings.clickhouse_dsn):
        store = AuditStore(settings.clickhouse_dsn, database=database)
        store.ensure_schema()

        def sink(base: str, msgs: list) -> None:
            store.insert(TOPIC_TABLES[base].name, msgs)

        outputs, timings = run_in_process(settings, plan, sink=sink, engine_form=engine_form)
        if outputs.counts.get("klines", 0) == 0:
            raise PipelineError("the plan's period holds no klines")
        out = Path(report_dir) if report_dir else REPO_ROOT / "reports" / ns
        from infra.run_meta import run_meta
        meta = run_meta(settings, plan, f"in process ({engine_form})", time.monotonic() - t0)
        result.summary = build_report(store, out, settings.equity, plan, console=console, meta=meta)
        store.point_latest()
    result.counts = dict(outputs.counts)
    result.timings = {**timings, "total_s": time.monotonic() - t0}
    result.report_dir = str(out)
    return result
