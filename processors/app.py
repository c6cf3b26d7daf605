"""The Faust (faust-streaming) application: `klines` -> per-symbol SMC state -> `signals`.

Two tables, both changelogged and co-partitioned with `klines` (a symbol's records share a partition):
  * `symbol-state`: per symbol, the engines' state (M1 and M5 SMC detectors, indicators, features);
  * `htf-bars`: a tumbling windowed table on the UTC grid of the higher timeframe (M5 for 1m klines),
    per (symbol, window) the HTF bar built from the base bars: the open one, and the last closed ones
    for readers (`table[symbol][window_range]`). An M5 bar is closed by the M1 bar that ends it (or by
    the first bar of a later window after a gap); nothing relies on on_window_close (#193, #250).

Exactly once in effect, per `klines` partition (processors.offsets): the state table also holds, per
partition, the offset of the next record the state must take. A record below it is a re-delivery
(skipped: no signal, no dead letter); a record past it means one in between has not reached the state
(Faust can deliver X+1 before X around a rebalance): it is held back, the partition is sought back,
and the state only ever takes records in offset order, each once.

Ordering that makes restarts lose nothing and double nothing, per group of batches (faust_batches):
  1. decode, update the per-symbol state, score each batch (processors.core, no I/O), produce its
     signals and dead letters;
  2. produce the group's new windows to their changelog, WAIT until the broker has acknowledged all
     of the above;
  3. only then produce the new state bytes to their changelog, then each partition's offset marker
     (after the states of its partition, in the same changelog partition), wait for those, update
     both tables,
  4. and only then ack the group's klines.
So the state never runs ahead of the signals it implies, nor of the windows it reads, and the marker
never runs ahead of the state: after a crash, re-delivered klines below the marker are skipped, and
those past it are re-processed from the state that had not taken them (same bytes out, the same
signal_id: consumers dedupe by id). A window may be stored ahead of the state; folding is idempotent
(a window knows the newest bar in it), so re-processing never counts a bar twice
(tests/processors/test_core.py), and the expiry of old windows counts back from the stored state, not
from the newest window, so the state's open window is there when a restart needs it. Records go out through one confluent-kafka producer
(processors.delivery): Faust's per-record send path cost more than the SMC engine itself. A broker
outage is waited out (SMC_DELIVERY_TIMEOUT_S); any fault the agent cannot handle ends the process
(fail_loud) so a supervisor restarts it from the committed state.
The stateful agent runs at concurrency 1 (faust-streaming #606: offsets can be committed past an
in-flight message with concurrency > 1).
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

import orjson

import faust
from aiokafka.errors import IllegalStateError, KafkaError
from faust.types import TP

from infra.probes import Heartbeat
from infra.settings import Settings
from processors import faust_guards
from processors.core import open_time_limit, KlineProcessor, expired_windows
from processors.delivery import BatchDelivery
from processors.faust_batches import ReadyBatches
from processors.offsets import (GAP, PROCESS, REDELIVERY, STALL_S, OffsetGapError, OffsetGate, decode_offset,
                                encode_offset, marker_key)
from processors.scoring import load_scorer
from processors.smc.htf import bucket_of
from schemas import encode_reject, interval_ms, make_reject, topic_name

log = logging.getLogger("smc.processors")

BATCH_MAX = 2000         # klines per batch at most: amortizes LightGBM and the Python overhead of a batch
GROUP_MAX = 10_000       # klines per group commit at most (bounds what a crash makes the broker re-deliver)
POLL_RECORDS = 500       # records per consumer poll
HTF_KEEP = 12            # closed HTF windows kept per symbol for readers (one hour of M5 bars)
SWEEP_MIN = 1024         # windowed-table size that triggers the first expiry sweep (then: twice the size left)
FAIL_EXIT = 70           # the exit status of a worker stopped by a fault it cannot handle (EX_SOFTWARE)


def fail_loud(reason: str) -> None:
    """End the worker process now, non-zero, with a one-line reason: a supervisor restarts it from the
    committed state. No clean shutdown on purpose: a Faust shutdown commits offsets, and nothing of an
    unfinished group may count as done (the state and the offset markers decide where a restart resumes).
    Faust's own policy, restarting a crashed agent in-process, would process later records over the
    records the crashed agent held."""
    line = " ".join(str(reason).split())
    log.critical("processors worker stops: %s", line)
    try:
        sys.stderr.write(f"processors worker stops: {line}\n")
        sys.stderr.flush()
    finally:
        os._exit(FAIL_EXIT)


def app_id(settings: Settings) -> str:
    return topic_name("smc-processors", settings.namespace)


def app_config(settings: Settings) -> dict:
    """Faust settings shared by the processors app and the benchmark's no-op baseline (tests/bench)."""
    return dict(
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        datadir=f"{settings.data_dir}/faust",
        processing_guarantee="at_least_once",
        broker_commit_interval=1.0,
        table_cleanup_interval=3600.0,
        producer_acks=-1,
        producer_linger_ms=2,
        consumer_auto_offset_reset="earliest",
        # One poll must never hold more records than the stream queue has room for: a full queue blocks
        # the conductor, and during a rebalance that starves table recovery forever (faust #74-like
        # deadlock, seen here 1 run in 4 with two workers). Small polls + a large queue keep Faust's
        # pressure-based partition pausing in charge instead.
        stream_buffer_maxsize=32_768,
        broker_max_poll_records=POLL_RECORDS,
        table_standby_replicas=0,
    )


def create_app(settings: Settings) -> faust.App:
    faust_guards.install()   # no record dropped, no offset skipped across rebalances (see the module)
    app = faust.App(app_id(settings), **app_config(settings))
    klines = app.topic(topic_name("klines", settings.namespace), key_type=bytes, value_type=bytes,
                       value_serializer="raw", key_serializer="raw", partitions=settings.partitions)
    signals = app.topic(topic_name("signals", settings.namespace), key_type=bytes, value_type=bytes,
                        value_serializer="raw", key_serializer="raw", partitions=settings.partitions)
    dlq = app.topic(topic_name("dlq", settings.namespace), key_type=bytes, value_type=bytes,
                    value_serializer="raw", key_serializer="raw", partitions=1)
    state_table = app.Table("symbol-state", default=None, partitions=settings.partitions,
                            key_type=bytes, value_type=bytes)
    # Keys (symbol, (start_s, end_s)) as Faust's windowed tables have them: JSON in the changelog.
    # No `expires`: Faust's expiry bookkeeping lives in Table.__setitem__, which the agent does not use,
    # and its time-based changelog retention could delete the open window of a quiet symbol. Windows
    # older than HTF_KEEP are deleted by the agent instead, with tombstones.
    htf_period = interval_ms(settings.interval) * settings.htf_factor
    htf_bars = app.Table("htf-bars", default=None, partitions=settings.partitions,
                         key_type=str, value_type=bytes).tumbling(htf_period / 1000)
    htf_table = htf_bars.table
    processor = KlineProcessor(load_scorer(settings.model_path), settings.strategy_version,
                               settings.interval, settings.htf_factor,
                               time_limit=open_time_limit(settings.interval, settings.replay_end,
                                                          lambda: int(time.time() * 1000)),
                               universe=[x for x in settings.universe.split(",") if x] or None)
    # process_s: time in the pure core and producing the signals; deliver_s: the rest of the group commit
    # (Faust consumes meanwhile)
    # klines: records the state took (each offset once); redelivered / held_back: skipped by the offset gate;
    # positions: per klines partition the offset the state expects next, end_offsets: the partition's end as
    # the consumer last saw it: a supervisor's health check compares the two (progress, not a timer)
    stats = {"klines": 0, "signals": 0, "rejects": 0, "batches": 0, "partitions": 0, "process_s": 0.0, "deliver_s": 0.0,
             "redelivered": 0, "held_back": 0, "seeks": 0, "rebalances": 0, "positions": {}, "end_offsets": {},
             "delivering_for_s": 0.0}
    app.smc_stats = stats  # type: ignore[attr-defined]
    # beaten by the stats timer below, an event-loop task like the agent: /health and /ready read its age
    refreshed = app.smc_refreshed = Heartbeat()  # type: ignore[attr-defined]
    # the tables' changelogs, created (compacted) before the worker subscribes: processors.__main__
    app.smc_changelogs = {state_table.changelog_topic.get_topic_name(): settings.partitions,  # type: ignore[attr-defined]
                          htf_table.changelog_topic.get_topic_name(): settings.partitions}

    delivery = BatchDelivery(settings, client_id=app_id(settings))
    signals_topic = signals.get_topic_name()
    dlq_topic = dlq.get_topic_name()
    klines_topic = klines.get_topic_name()
    state_changelog = state_table.changelog_topic.get_topic_name()
    htf_changelog = htf_table.changelog_topic.get_topic_name()
    store = state_table.data
    htf_store = htf_table.data
    # the newest states and windows the open group wrote, not yet acknowledged (see process_klines)
    unconfirmed: dict[str, bytes] = {}
    unconfirmed_windows: dict[tuple[str, int], bytes] = {}
    # per symbol, the HTF window (start, s) of the newest base bar in its stored state: expiry is measured
    # from it (processors.core.expired_windows); the open group's, then what this worker stored
    unconfirmed_buckets: dict[str, float] = {}
    stored_buckets: dict[str, float] = {}
    symbol_partition: dict[bytes, int] = {}  # fixed by the key: klines are partitioned by symbol

    def window_key(symbol: str, bucket: int) -> tuple:
        return symbol, htf_table.window.current(bucket / 1000)

    def produce_window(key: tuple, blob: bytes | None) -> None:
        """A window (None: a tombstone) to the windowed table's changelog, keyed as Faust keys it (JSON)."""
        delivery.produce(htf_changelog, orjson.dumps(key), blob, partition=symbol_partition[key[0].encode()])

    class AgentTables:
        """processors.core.Tables over the Faust tables and what the open group wrote."""

        @staticmethod
        def state(symbol: str) -> bytes | None:
            blob = unconfirmed.get(symbol)
            return blob if blob is not None else store.get(symbol.encode())

        @staticmethod
        def window(symbol: str, bucket: int) -> bytes | None:
            blob = unconfirmed_windows.get((symbol, bucket))
            return blob if blob is not None else htf_store.get(window_key(symbol, bucket))

    tables = AgentTables()

    def stored_offset(partition: int) -> int | None:
        blob = store.get(marker_key(partition))
        return None if blob is None else decode_offset(blob)

    gate = OffsetGate(stored_offset)

    async def start_partitions(batch) -> None:
        """An expectation for each partition of the batch that has none: its log start (the state never took
        a record of it). Never the committed offset: a commit can run past a record no state took (seen in
        tests/processors/test_worker.py: an acked, withheld record was committed over before the
        partition's first batch, and its successors were then taken as if it had been)."""
        new = {e.message.tp for e in batch if gate.expected(e.message.partition) is None}
        if not new:
            return
        earliest = await log_start(sorted(new))
        for tp in new:
            gate.start(tp.partition, earliest.get(tp) or 0)

    async def log_start(tps: list) -> dict:
        """The partitions' first offsets, waiting out a broker outage as delivery does (SMC_DELIVERY_TIMEOUT_S)."""
        deadline = time.monotonic() + settings.delivery_timeout_s
        while True:
            try:
                return await asyncio.wait_for(app.consumer.earliest_offsets(*tps),
                                              max(1.0, deadline - time.monotonic()))
            except (asyncio.TimeoutError, KafkaError) as exc:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"the first offsets of {sorted(tp.partition for tp in tps)} of {klines_topic} "
                                       f"could not be read within {settings.delivery_timeout_s:.0f} s "
                                       f"(SMC_DELIVERY_TIMEOUT_S): {type(exc).__name__}: {exc}") from None
                await asyncio.sleep(1.0)

    async def seek_back() -> None:
        """Seek partitions with a gap back to the offset their state expects (OffsetGapError: fail loud)."""
        now = time.monotonic()
        if gate.seek_due(now) and not await asyncio.get_running_loop().run_in_executor(None, delivery.broker_reachable):
            log.warning("the broker does not answer: the offset gate's seeks wait (an outage is waited out)")
            gate.postpone(time.monotonic())
            return
        mine = app.consumer.assignment()
        for partition, offset in gate.seeks_due(time.monotonic()):
            tp = TP(klines_topic, partition)
            if tp not in mine:
                gate.pending.pop(partition, None)   # its new owner resumes from the stored expectation
                continue
            log.warning("klines partition %d: record %d has not reached the state yet; seeking back to it",
                        partition, offset)
            stats["seeks"] += 1
            try:
                await app.consumer.seek(tp, offset)
            except IllegalStateError:       # revoked since the assignment was read: the new owner resumes
                gate.pending.pop(partition, None)

    def expired_assigned() -> list:
        """Windows past HTF_KEEP, counted back from the stored state, of the symbols whose partitions this
        worker holds now and whose state it stored itself (a state it has not stored yet may be behind its
        windows, after a crash between the flushes: its open window must stay)."""
        mine = {tp.partition for tp in app.consumer.assignment() if tp.topic == klines_topic}
        keys = [k for k in htf_store.keys() if symbol_partition.get(k[0].encode()) in mine]
        return expired_windows(keys, HTF_KEEP * htf_period / 1000, stored_buckets)

    group: list[list] = []   # the open group's batches, acked together once the group is durable
    sweep = {"at": SWEEP_MIN}     # windowed-table size that triggers the next expiry sweep

    def take(batch) -> list[tuple]:
        """The records of the batch the state must take, in order; the offset gate skips the rest."""
        now = time.monotonic()
        records = []
        for e in batch:
            m = e.message
            verdict = gate.classify(m.partition, m.offset, now)
            if verdict is PROCESS:
                records.append((m.key, m.value))
            elif verdict is REDELIVERY:
                stats["redelivered"] += 1      # the state holds it already: no dead letter, no signal
            else:
                assert verdict is GAP
                if not stats["held_back"] % 1000:
                    log.warning("klines partition %d: record %d came before %d; held back", m.partition, m.offset,
                                gate.expected(m.partition))
                stats["held_back"] += 1        # comes again after the seek back
        return records

    def process(batch) -> None:
        t0 = time.perf_counter()
        result = processor.step(take(batch), tables)
        for sym, raw in result.signals:    # out first: encoding the states can wait for them
            delivery.produce(signals_topic, sym.encode(), raw)
        for sym, state in result.touched.items():
            t = state.base.last_time
            unconfirmed_buckets[sym] = bucket_of(t, htf_period) / 1000
        processor.encode(result)
        now = int(time.time() * 1000)
        for reason, key, raw in result.rejects:
            rej = make_reject("processors", reason, raw, key, now, klines_topic)
            delivery.produce(dlq_topic, b"processors", encode_reject(rej))
        unconfirmed.update(result.states)
        unconfirmed_windows.update(result.windows)
        group.append(batch)
        stats["klines"] += result.klines
        stats["signals"] += len(result.signals)
        stats["rejects"] += len(result.rejects)
        stats["batches"] += 1
        stats["process_s"] += time.perf_counter() - t0

    async def commit_group(batches: ReadyBatches) -> None:
        t1 = time.perf_counter()
        symbol_partition.update((e.message.key, e.message.partition) for done in group for e in done)
        # Changelog partition = the source partition of the symbol's klines (co-partitioning), as
        # Table.__setitem__ would pick it.
        windows = {window_key(sym, bucket): blob for (sym, bucket), blob in unconfirmed_windows.items()}
        for key, blob in windows.items():
            produce_window(key, blob)
        sweeping = len(htf_store) >= sweep["at"]   # amortised: the store doubles between sweeps
        expired = [k for k in expired_assigned() if k not in windows] if sweeping else []
        for key in expired:
            produce_window(key, None)
        await delivery.flush()  # the group's signals, dead letters and windows are acknowledged ...
        for symbol, blob in unconfirmed.items():
            # ... before the state that implies the signals and reads the windows may become
            # recoverable
            key = symbol.encode()
            delivery.produce(state_changelog, key, blob, partition=symbol_partition[key])
        # The offset markers after the states, in the same changelog partitions: a partition's log keeps
        # that order, so a recovered marker never claims a record whose state did not land.
        markers = {}
        for partition, offset in gate.durable().items():
            markers[marker_key(partition)] = blob = encode_offset(offset)
            delivery.produce(state_changelog, marker_key(partition), blob, partition=partition)
        await delivery.flush()
        # what Table.__setitem__ does besides the changelog send it left to us: the tables keep
        # no TTL bookkeeping (no `expires`), and no sensors are used here
        htf_store.update(windows)
        for key in expired:
            del htf_store[key]
        if sweeping:
            sweep["at"] = max(SWEEP_MIN, 2 * len(htf_store))
        for symbol, blob in unconfirmed.items():
            store[symbol.encode()] = blob
        store.update(markers)
        stored_buckets.update(unconfirmed_buckets)
        gate.stored_now()
        unconfirmed.clear()
        unconfirmed_buckets.clear()
        unconfirmed_windows.clear()
        # every record of the group, skipped ones too: the markers, not the committed offsets, say what
        # the state holds (a commit past a held-back record is sought back from the marker on restart)
        for done in group:
            await batches.ack(done)
        group.clear()
        stats["deliver_s"] += time.perf_counter() - t1

    @app.agent(klines, concurrency=1)
    async def process_klines(stream):
        """Group commit: batches are processed and their signals produced back to back while more klines
        are queued; then the group is made durable in order:
          1. produce the newest window of each touched (symbol, window), wait until those and every
             signal and dead letter of the group are acknowledged,
          2. produce the newest state of each touched symbol to its changelog, then each partition's
             expected next offset (processors.offsets), wait for those,
          3. update both tables, ack the group's klines (their offsets may now be committed).
        A signal leaves within librdkafka's linger (1 ms) of its batch, not after earlier batches' round
        trips; under load a group costs two broker round trips, however many batches it holds. A group
        closes as soon as nothing is queued, so an idle stream or a rebalance never holds acks back.
        Any exception ends the worker process (fail_loud).
        """
        batches = ReadyBatches(stream, BATCH_MAX)
        try:
            async for batch in batches:
                await start_partitions(batch)
                process(batch)
                if gate.pending:
                    await seek_back()
                if batches.waiting and sum(map(len, group)) < GROUP_MAX:
                    continue            # more is queued: processing it overlaps this group's delivery
                await commit_group(batches)
        except asyncio.CancelledError:
            raise                       # the worker is stopping
        except BaseException as exc:    # noqa: BLE001 - a fault the agent cannot handle: stop, restart from committed state
            fail_loud(f"agent process_klines: {type(exc).__name__}: {exc}")

    @app.timer(2.0)
    async def _watch_partitions():
        """Seek back a partition whose expected record has not come yet (again, bounded), or that went quiet
        with records left (processors.offsets)."""
        if app.rebalancing or not app.consumer.flow_active:
            return                      # nothing flows now; the assignment's end resets the stall clocks
        try:
            now = time.monotonic()
            for tp in app.consumer.assignment():
                if tp.topic == klines_topic and gate.check_stalled(tp.partition, app.consumer.highwater(tp), now):
                    log.warning("klines partition %d took nothing for %.0f s with records left (expects %s, end %s)",
                                tp.partition, STALL_S, gate.expected(tp.partition), app.consumer.highwater(tp))
            if gate.pending:
                await seek_back()
        except OffsetGapError as exc:
            fail_loud(f"offset gate: {exc}")
        except Exception as exc:        # noqa: BLE001 - a consumer busy rebalancing; the next tick looks again
            log.warning("partition watch: %s: %s", type(exc).__name__, exc)

    @app.on_before_shutdown.connect
    async def _close_delivery(sender, **kwargs):
        delivery.close()

    stats_file = os.environ.get("SMC_STATS_FILE")
    if stats_file or settings.metrics_port:  # tests, the main job and the supervisor read the file; scrapes the dict
        @app.timer(0.5)
        async def _dump_stats():
            mine = [tp for tp in app.consumer.assignment() if tp.topic == klines_topic]
            # whole values replaced, never mutated: a scrape (another thread) reads a consistent dict
            stats["positions"] = {str(tp.partition): gate.expected(tp.partition) for tp in mine}
            stats["end_offsets"] = {str(tp.partition): app.consumer.highwater(tp) for tp in mine}
            stats["delivering_for_s"] = round(time.monotonic() - delivery.waiting_since, 1) if delivery.waiting_since else 0.0
            refreshed.beat()
            if not stats_file:
                return
            tmp = stats_file + ".tmp"
            with open(tmp, "wb") as fh:
                fh.write(orjson.dumps(stats))
            os.replace(tmp, stats_file)

    @app.on_rebalance_complete.connect
    async def _after_rebalance(sender, **kwargs):
        processor.forget()   # the table's bytes are the truth after a rebalance
        gate.assigned({tp.partition for tp in app.consumer.assignment() if tp.topic == klines_topic}, time.monotonic())
        stats["partitions"] = sum(1 for tp in app.consumer.assignment() if tp.topic == klines.get_topic_name())
        stats["rebalances"] += 1

    return app
