"""The executor service: Kafka `signals` in, decisions/orders/fills/positions/equity out, exactly once.

Consume-transform-produce in Kafka transactions (one executor owns one account):
* the consumer is assigned ALL partitions of `signals` (and of `executor-commands`) directly — no
  group rebalancing, so a restart after SIGKILL resumes at once; the group only stores offsets;
* per batch (<= `batch_max` records): begin_transaction -> for each signal the engine's records are
  produced (key = symbol, equity key "account"; bad records -> `dlq` via send_reject) -> the
  engine's full state is produced to the compacted `executor-state` topic -> the consumed offsets
  are added with send_offsets_to_transaction -> commit_transaction. Outputs, state and offsets
  become visible together or not at all (consumers of the outputs read with isolation
  read_committed, as infra.kafka_io.consumer does);
* restart: init_transactions() (same transactional.id) fences the dead instance and aborts its open
  transaction; the state is the last committed `executor-state` record, the offsets the committed
  ones, so processing resumes exactly where the last commit left it and re-produces the aborted
  batch with the same ids (the engine is deterministic; `wall_ts` differs only);
* live (binance broker): an order sent in an aborted batch is sent again with the SAME client id;
  the Binance broker looks every id up before sending and, for recvWindow + margin after start-up,
  does not trust "not found" (the killed process's request may still be in flight:
  executor.brokers.binance), so the exchange never sees a second order, and `reconcile()` compares
  the restored state with the exchange.
Order of processing = consumption order: with several partitions, signals of different symbols
interleave by arrival (per-symbol order is guaranteed by the key). Sizing depends on account equity,
so bit-identical replays across runs need the signals in one partition or the same arrival order.
"""
from __future__ import annotations

import heapq
import logging
import os
import signal as _signal
import time
from dataclasses import dataclass, field

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from executor.brokers.base import Broker, BrokerError
from executor.config import ExecutorConfig, config_from_env
from executor.engine import Engine
from executor.instruments import InstrumentBook, load_exchange_info
from infra import kafka_io
from infra.probes import Heartbeat
from infra.settings import Settings
from schemas.codec import encode
from schemas.errors import SchemaError
from schemas.signal import decode_signal
from schemas.trading import Alert, Decision, Equity, Fill, Order, Position

log = logging.getLogger("smc.executor")


class EventTimeMerge:
    """Releases consumed signals in event-time order across partitions: (close_time, symbol, timeframe).

    Sizing depends on account equity, so the order in which symbols are processed changes the orders.
    Arrival order across partitions depends on timing; event-time order does not, so a replay gives
    the same orders byte for byte. A record is released only while every partition has a record
    waiting (its head bounds what that partition can still deliver), or on `flush` (all partitions
    caught up, or the live max-wait passed). Within a partition records arrive in event-time order.
    Commands and undecodable records carry no event time and are released at once.
    """

    def __init__(self, signals_topic: str) -> None:
        self.topic = signals_topic
        self.partitions: list[int] = []
        self.queues: dict[int, list] = {}
        self._pos: dict[int, int] = {}
        self.immediate: list = []
        self._n = 0

    def set_partitions(self, partitions: list[int]) -> None:
        self.partitions = sorted(partitions)
        self.queues = {p: [] for p in self.partitions}
        self._pos = {p: 0 for p in self.partitions}

    def clear(self) -> None:
        self.set_partitions(self.partitions)
        self.immediate = []
        self._n = 0

    def __len__(self) -> int:
        return self._n + len(self.immediate)

    def add(self, msgs) -> None:
        for m in msgs:
            if m.error() or m.topic() != self.topic:
                self.immediate.append(m)
                continue
            try:
                head = orjson.loads(m.value())
                key = (int(head["close_time"]), str(head["symbol"]), str(head["timeframe"]))
            except Exception:            # decode errors are reported by the processing step
                self.immediate.append(m)
                continue
            self.queues.setdefault(m.partition(), []).append((key, m))
            self._pos.setdefault(m.partition(), 0)
            self._n += 1

    def release(self, flush: bool, limit: int) -> list:
        out, self.immediate = self.immediate, []
        heads = []
        for p, q in self.queues.items():
            i = self._pos[p]
            if i < len(q):
                heapq.heappush(heads, (q[i][0], p))
            elif not flush:
                self._compact()
                return out          # a partition with nothing waiting may still deliver an earlier record
        while heads and len(out) < limit:
            key, p = heapq.heappop(heads)
            q, i = self.queues[p], self._pos[p]
            out.append(q[i][1])
            self._pos[p] = i + 1
            self._n -= 1
            if i + 1 < len(q):
                heapq.heappush(heads, (q[i + 1][0], p))
            elif not flush:
                break
        self._compact()
        return out

    def _compact(self) -> None:
        for p, q in self.queues.items():
            i = self._pos[p]
            if i and i * 2 >= len(q):
                del q[:i]
                self._pos[p] = 0

STATE_TOPIC = "executor-state"
COMMANDS_TOPIC = "executor-commands"
OUTPUT_TOPICS = {Decision: "decisions", Order: "orders", Fill: "fills", Position: "positions", Equity: "equity",
                 Alert: "alerts"}


@dataclass
class RunStats:
    signals: int = 0
    commands: int = 0
    rejects: int = 0
    batches: int = 0
    records: int = 0
    orders: int = 0
    fills: int = 0
    alerts: int = 0
    elapsed_s: float = 0.0
    restored: bool = False
    reconciliations: int = 0
    decision_us: list[float] = field(default_factory=list)   # signal consumed -> entry order handed to the broker

    @property
    def signals_per_s(self) -> float:
        return self.signals / self.elapsed_s if self.elapsed_s > 0 else 0.0


def make_broker(settings: Settings, cfg: ExecutorConfig, live: bool = False) -> Broker:
    if settings.broker == "paper":
        from executor.brokers.paper import PaperBroker
        return PaperBroker(cfg.paper)
    if settings.broker == "binance":
        from executor.brokers.binance import BinanceBroker
        from executor.brokers.base import BrokerError
        from executor.protection import check_protection_bound
        broker = BinanceBroker.from_settings(settings, live=live)
        try:   # defaults: 2 x max(3 s, 2.5 s + 1 s) = 7 s within the 8 s bound
            check_protection_bound(broker.client.timeout, broker.client.recv_window, broker.unknown_margin_s,
                                   cfg.protect_within_ms)
        except ValueError as exc:
            broker.close()
            raise BrokerError(str(exc)) from None
        return broker
    raise ValueError(f"unknown broker {settings.broker!r} (paper | binance)")


def ensure_executor_topics(settings: Settings) -> None:
    kafka_io.ensure_topics(settings, ["signals", "decisions", "orders", "fills", "positions", "equity", "alerts", "dlq",
                                      STATE_TOPIC, COMMANDS_TOPIC])   # all in schemas/topics.py


class ExecutorService:
    def __init__(self, settings: Settings, cfg: ExecutorConfig | None = None, broker: Broker | None = None,
                 *, batch_max: int = 500, live: bool = False, max_wait_s: float = 2.0,
                 reconcile_within_s: float = 10.0) -> None:
        self.settings = settings
        self.cfg = cfg or config_from_env(settings.equity)
        self.broker = broker or make_broker(settings, self.cfg, live)
        generic = self.cfg.generic_instruments and self.settings.broker == "paper"   # never generic for real orders
        book = InstrumentBook(load_exchange_info(self.cfg.exchange_info), generic) if self.cfg.exchange_info \
            else InstrumentBook.default(generic)
        self.engine = Engine(self.cfg, self.broker, book)
        self.batch_max = batch_max
        self.stats = RunStats()
        self._stop = False
        self._crash_after = int(os.environ.get("SMC_EXEC_CRASH_AFTER", "0") or 0)
        self._t_batch = 0
        self.engine_submit_hook()
        self.producer = None
        self.consumer = None
        self._committed_state = b""
        self._committed_offsets: list[TopicPartition] = []
        self._start_offsets: dict[tuple[str, int], int] = {}
        self.merge = EventTimeMerge(kafka_io.topic(settings, "signals"))
        self._last_caught_up_check = 0.0
        self._wm_client = None
        self._ready: list = []          # released by the merge, not yet processed (in event-time order)
        self.max_wait_s = max_wait_s
        self._reconciled = False        # the start-up reconciliation has run
        self.reconcile_within_s = reconcile_within_s
        self.reconcile_retry_s = 5.0    # after a failed reconciliation (the exchange is not answering)
        self._reconcile_not_before = 0.0
        self.metrics = None             # /metrics, /health, /ready when SMC_METRICS_PORT is set (port + 1)
        self.heartbeat = Heartbeat()    # beaten by the consumer loop (run); made again when the endpoints start

    def engine_submit_hook(self) -> None:
        orig = self.broker.submit

        def timed_submit(order, ts, *a, **kw):
            if order.leg == "entry":
                self.stats.decision_us.append((time.perf_counter_ns() - self._t_batch) / 1000.0)
            return orig(order, ts, *a, **kw)
        self.broker.submit = timed_submit

    # ------------------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        if s.metrics_port and self.metrics is None:
            from executor.metrics import collector, probes
            from infra.metrics import serve
            self.heartbeat = Heartbeat()
            self.metrics = serve(s.metrics_port + 1, collector(lambda: self.stats), s.metrics_addr,
                                 probes(self.heartbeat, lambda: self.engine.halted, lambda: self.stats))
        if s.user_stream and hasattr(self.broker, "start_user_stream"):
            # fills and stop triggers by push; every (re)connect makes a reconciliation due (run below)
            self.broker.start_user_stream()
        ensure_executor_topics(s)
        txn_id = kafka_io.group(s, "executor") + ".txn"
        # retry.backoff.ms 5 (librdkafka: 100, growing to retry.backoff.max.ms): a transaction begun right
        # after the last commit meets CONCURRENT_TRANSACTIONS while the broker writes that commit's markers,
        # and waits one backoff: at 100 ms, back-to-back 1-symbol commits took p99 ~125 ms (p50 up to 95 ms)
        # against 9-15 ms at 5 ms (tests/bench/test_bench_transactions.py)
        self.producer = kafka_io.producer(s, **{"transactional.id": txn_id, "transaction.timeout.ms": 60_000,
                                                "retry.backoff.ms": 5})
        self.producer.init_transactions(30)           # fences a previous instance, aborts its open txn
        self.consumer = kafka_io.consumer(s, "executor", **{"enable.partition.eof": False})
        self._restore_state()
        tps = []
        for base in ("signals", COMMANDS_TOPIC):
            name = kafka_io.topic(s, base)
            md = self.consumer.list_topics(name, timeout=30).topics[name]
            tps += [TopicPartition(name, p) for p in sorted(md.partitions)]
        for attempt in range(20):   # a fresh broker answers NOT_COORDINATOR until __consumer_offsets is ready
            try:
                committed = self.consumer.committed(tps, timeout=30)
                break
            except KafkaException as exc:
                code = exc.args[0].code() if exc.args and hasattr(exc.args[0], "code") else None
                if code not in (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                KafkaError.COORDINATOR_NOT_AVAILABLE) or attempt == 19:
                    raise
                time.sleep(0.5)
        for tp in committed:
            if tp.offset < 0:
                tp.offset = OFFSET_BEGINNING
        self.consumer.assign(committed)
        self.merge.set_partitions([tp.partition for tp in committed if tp.topic == kafka_io.topic(s, "signals")])
        self._start_offsets = {(tp.topic, tp.partition): tp.offset for tp in committed}
        self._committed_offsets = [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in committed]
        self._committed_state = orjson.dumps(self.engine.to_dict())
        log.info("executor started: %d partitions, state restored=%s", len(tps), self.stats.restored)

    def _restore_state(self) -> None:
        name = kafka_io.topic(self.settings, STATE_TOPIC)
        c = kafka_io.consumer(self.settings, "executor-state-reader", **{"enable.partition.eof": True})
        try:
            low, high = kafka_io.watermarks(c, name, 0, timeout=30)   # its leader may not be elected yet
            last = None
            start = max(low, high - 32)
            while high > low and last is None:
                c.assign([TopicPartition(name, 0, start)])
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    m = c.poll(0.5)
                    if m is None:
                        continue
                    if m.error():
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            break
                        raise KafkaException(m.error())
                    last = m.value()
                if last is None and start > low:
                    start = low
                    continue
                break
            if last:
                self.engine.load_dict(orjson.loads(last))
                self.stats.restored = True
        finally:
            c.close()

    def _reconcile(self) -> None:
        """Compare the exchange with the executor's state and act (executor.reconcile): at start-up once the
        restored state has caught up with the signals (an aborted batch is re-processed first: its orders
        are found by client id, not mistaken for foreign ones), and after any disconnect. An exchange
        error here must not end the process (a restart would meet it again: a crash loop): new entries
        halt until the operator resumes, and it is tried again after the next batch."""
        rec = getattr(self.broker, "reconcile", None)
        if rec is None:
            self._reconciled = True
            return
        now = int(time.time() * 1000)
        try:
            recs = rec(self.engine, now, now)
        except BrokerError as exc:
            self._reconcile_not_before = time.monotonic() + self.reconcile_retry_s   # not at every poll
            if not self.engine.halted:
                self.engine.halted = f"reconciliation with the exchange failed: {exc}"[:300]
                log.critical("TRADING HALTED: %s. Open positions are still managed; resume with "
                             "{\"cmd\": \"resume\"} once the exchange answers.", self.engine.halted)
            return
        self._reconciled = True
        self.stats.reconciliations += 1
        summary = [r.detail for r in recs if isinstance(r, Alert) and r.kind == "reconciled"]
        log.warning("reconciliation with the exchange: %s", summary[0] if summary else "")
        if self.producer is not None:
            self._commit_records(recs)
        else:                    # not started (tests): the records go out with the next batch
            self.engine._pending_alerts += recs

    def _reconcile_due(self, caught_up: bool, since_start_s: float) -> bool:
        drift = getattr(self.broker, "position_drift", None)
        if drift is not None and self._reconciled:
            drift(self.engine)       # a position changed behind the executor's back makes one due
        due = getattr(self.broker, "needs_reconcile", None)
        if due is None or time.monotonic() < self._reconcile_not_before or not due():
            return False
        return self._reconciled or caught_up or since_start_s >= self.reconcile_within_s

    def _commit_records(self, recs: list) -> None:
        """Records caused outside a batch (reconciliation), in a transaction with the engine's state."""
        p, s = self.producer, self.settings
        topics = {cls: kafka_io.topic(s, base) for cls, base in OUTPUT_TOPICS.items()}
        p.begin_transaction()
        for r in recs:
            p.produce(topics[type(r)], key=b"account" if isinstance(r, Equity) else r.symbol.encode(), value=encode(r))
        state = orjson.dumps(self.engine.to_dict())
        p.produce(kafka_io.topic(s, STATE_TOPIC), key=b"account", value=state)
        p.commit_transaction(60)
        self._committed_state = state
        self.stats.records += len(recs)

    # ------------------------------------------------------------------------------------------
    def stop(self, *_args) -> None:
        self._stop = True

    def run(self, until_idle: bool = False, idle_s: float = 2.0, max_seconds: float | None = None) -> RunStats:
        if self.producer is None:
            self.start()
        t0 = time.monotonic()
        last_msg = time.monotonic()
        try:
            while not self._stop:
                self.heartbeat.beat()
                if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                    break
                msgs = self.consumer.consume(num_messages=self.batch_max, timeout=0.2)
                if msgs:
                    last_msg = time.monotonic()
                    self.merge.add(msgs)
                idle = time.monotonic() - last_msg
                # watermark look-ups are broker round trips (~0.3 s here): only after a quiet spell, <= 1/s
                caught_up = False
                if not msgs and idle >= 0.25 and time.monotonic() - self._last_caught_up_check >= 1.0:
                    self._last_caught_up_check = time.monotonic()
                    caught_up = self._caught_up()
                # an empty partition holds the others back until it is caught up (or, live, until max_wait)
                self._ready += self.merge.release(flush=caught_up or idle >= self.max_wait_s,
                                                  limit=self.batch_max - len(self._ready))
                # one transaction per full batch: while records keep arriving, small releases accumulate
                if self._ready and (len(self._ready) >= self.batch_max or not msgs):
                    batch, self._ready = self._ready, []
                    while batch:      # several transactions when the broker's effects end one early
                        self._t_batch = time.perf_counter_ns()
                        batch = self._process_batch(batch)
                    if self._reconcile_due(False, time.monotonic() - t0):
                        self._reconcile()
                    continue
                if self._reconcile_due(caught_up, time.monotonic() - t0):
                    self._reconcile()
                if not msgs and until_idle and idle >= idle_s and not len(self.merge) and not self._ready and \
                        (caught_up or idle >= max(30.0, 10 * idle_s)):
                    break
        finally:
            self.stats.elapsed_s = time.monotonic() - t0
        return self.stats

    def _caught_up(self) -> bool:
        """Every assigned partition consumed up to its high watermark (a fetch can lag the idle timer)."""
        if self._wm_client is None:
            # a client with no fetch in flight: on the main consumer the look-up waits behind its long poll
            self._wm_client = kafka_io.consumer(self.settings, "executor-watermarks")
        for tp in self.consumer.position(self.consumer.assignment()):
            low, high = self._wm_client.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5)
            start = self._start_offsets.get((tp.topic, tp.partition), -1)
            pos = tp.offset if tp.offset >= 0 else (start if start >= 0 else low)
            if pos < high:
                return False
        return True

    def _process_batch(self, msgs) -> list:
        """One transaction over `msgs`; returns the records left for the next one. With a broker that acts
        on an exchange the transaction ends after the first signal that produced an order record: the
        exchange's state then moves only with committed state, and a restart replays at most that one
        signal, whose orders the broker finds by client id. A longer replay would meet an exchange that
        later signals had already changed (a stop cancelled after its target filled, a later entry
        executed) and decide differently from the first time: the replay divergence the SIGKILL chaos
        test found (SMC_CHAOS_SEED=8)."""
        p = self.producer
        one_effect = self.broker.external_effects
        left: list = []
        s = self.settings
        signals_topic = kafka_io.topic(s, "signals")
        topics = {cls: kafka_io.topic(s, base) for cls, base in OUTPUT_TOPICS.items()}
        p.begin_transaction()
        try:
            for i, m in enumerate(msgs):
                if left:
                    break
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(m.error())
                if m.topic() != signals_topic:
                    self._command(m)
                    continue
                try:
                    sig = decode_signal(m.value())
                except SchemaError as exc:
                    kafka_io.send_reject(p, s, "executor", str(exc), m.value(), m.key(), m.topic(), m.partition(), m.offset())
                    self.stats.rejects += 1
                    continue
                recs = self.engine.process(sig, wall_ts=int(time.time() * 1000))
                self.stats.signals += 1
                if one_effect and any(isinstance(r, Order) for r in recs):
                    left = msgs[i + 1:]
                for r in recs:
                    key = b"account" if isinstance(r, Equity) else r.symbol.encode()
                    p.produce(topics[type(r)], key=key, value=encode(r))
                    if isinstance(r, Order):
                        self.stats.orders += 1
                    elif isinstance(r, Fill):
                        self.stats.fills += 1
                    elif isinstance(r, Alert):
                        self.stats.alerts += 1
                self.stats.records += len(recs)
                p.poll(0)
                if self._crash_after and self.stats.signals >= self._crash_after:
                    p.flush(10)   # the outputs reach the log, uncommitted: read_committed must hide them
                    os.kill(os.getpid(), _signal.SIGKILL)
            state = orjson.dumps(self.engine.to_dict())
            p.produce(kafka_io.topic(s, STATE_TOPIC), key=b"account", value=state)
            if left:
                msgs = msgs[:len(msgs) - len(left)]
            done = {(tp.topic, tp.partition): tp.offset for tp in self._committed_offsets}
            for m in msgs:
                done[(m.topic(), m.partition())] = max(done.get((m.topic(), m.partition()), -1), m.offset() + 1)
            offsets = [TopicPartition(t, part, off) for (t, part), off in sorted(done.items()) if off >= 0]
            p.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30)
            p.commit_transaction(60)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if err is not None and hasattr(err, "txn_requires_abort") and err.txn_requires_abort():
                log.error("transaction aborted (%s): rewinding to the last commit", err)
                p.abort_transaction(30)
                self._rewind()
                return []
            raise
        self.stats.batches += 1
        self._committed_state = state
        self._committed_offsets = offsets
        return left

    def _rewind(self) -> None:
        self.engine.load_dict(orjson.loads(self._committed_state))
        self.merge.clear()
        self._ready = []
        for tp in self._committed_offsets:
            self.consumer.seek(tp)

    def _command(self, m) -> None:
        try:
            cmd = orjson.loads(m.value())
            if not isinstance(cmd, dict):
                raise ValueError("expected a JSON object")
            self.engine.command(cmd)
            self.stats.commands += 1
        except (ValueError, orjson.JSONDecodeError) as exc:
            kafka_io.send_reject(self.producer, self.settings, "executor.command", str(exc), m.value(), m.key(),
                                 m.topic(), m.partition(), m.offset())
            self.stats.rejects += 1

    def close(self) -> None:
        if self._wm_client is not None:
            self._wm_client.close()
            self._wm_client = None
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self.producer is not None:
            self.producer.flush(10)
            self.producer = None
        self.broker.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


def run_executor(settings: Settings, until_idle: bool = True, idle_s: float = 2.0, cfg: ExecutorConfig | None = None,
                 broker: Broker | None = None, live: bool = False, install_signals: bool = False) -> RunStats:
    """Run the executor in-process (main job, tests). until_idle: stop after `idle_s` s without records."""
    svc = ExecutorService(settings, cfg, broker, live=live)
    if install_signals:
        _signal.signal(_signal.SIGTERM, svc.stop)
        _signal.signal(_signal.SIGINT, svc.stop)
    try:
        svc.start()
        return svc.run(until_idle=until_idle, idle_s=idle_s)
    finally:
        svc.close()


def send_command(settings: Settings, cmd: dict) -> None:
    """Operator command to a running executor, e.g. {"cmd": "flatten", "symbol": "BTCUSDT"}."""
    ensure_executor_topics(settings)
    p = kafka_io.producer(settings)
    p.produce(kafka_io.topic(settings, COMMANDS_TOPIC), key=b"cmd", value=orjson.dumps(cmd))
    p.flush(10)
