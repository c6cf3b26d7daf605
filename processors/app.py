"""The Faust (faust-streaming) application: `klines` -> per-symbol SMC state -> `signals`.

Ordering that makes restarts lose nothing and double nothing, per batch (processors.faust_batches):
  1. decode, update the per-symbol state, score the batch (processors.core, no I/O);
  2. produce the batch's signals and dead letters; when nothing more is queued (or the group of
     batches is large), WAIT for the broker's acknowledgement of all of them;
  3. only then produce the new state bytes to the table's changelog, wait for those, update the table,
  4. and only then ack the group's klines (offsets commit after acks, never past an unacked one).
So the state never runs ahead of the signals it implies: after a crash, re-delivered klines either
are re-processed from an older state (same bytes out, the same signal_id: consumers dedupe by id) or
are recognised as duplicates. Records go out through one confluent-kafka producer
(processors.delivery): Faust's per-record send path cost more than the SMC engine itself.
The stateful agent runs at concurrency 1 (faust-streaming #606: offsets can be committed past an
in-flight message with concurrency > 1). M5 bars are closed by the M1 bar that ends them, inside the
per-symbol state; nothing relies on on_window_close (#193, #250).
"""
from __future__ import annotations

import logging
import os
import time

import orjson

import faust

from infra.settings import Settings
from processors import faust_guards
from processors.core import KlineProcessor
from processors.delivery import BatchDelivery
from processors.faust_batches import ReadyBatches
from processors.scoring import load_scorer
from schemas import encode_reject, make_reject, topic_name

log = logging.getLogger("smc.processors")

BATCH_MAX = 2000         # klines per batch at most: amortizes LightGBM and the Python overhead of a batch
GROUP_MAX = 10_000       # klines per group commit at most (bounds what a crash makes the broker re-deliver)
POLL_RECORDS = 500       # records per consumer poll


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
    processor = KlineProcessor(load_scorer(settings.model_path), settings.strategy_version,
                               settings.interval, settings.htf_factor)
    # process_s: time in the pure core; deliver_s: producing and awaiting acks (Faust consumes meanwhile)
    stats = {"klines": 0, "signals": 0, "rejects": 0, "batches": 0, "partitions": 0, "process_s": 0.0, "deliver_s": 0.0}
    app.smc_stats = stats  # type: ignore[attr-defined]

    delivery = BatchDelivery(settings, client_id=app_id(settings))
    signals_topic = signals.get_topic_name()
    dlq_topic = dlq.get_topic_name()
    klines_topic = klines.get_topic_name()
    changelog_topic = state_table.changelog_topic.get_topic_name()
    store = state_table.data
    # the newest state of every symbol the open group touched, not yet acknowledged (see process_klines)
    unconfirmed: dict[str, bytes] = {}

    def get_state(symbol: str) -> bytes | None:
        blob = unconfirmed.get(symbol)
        return blob if blob is not None else store.get(symbol.encode())

    @app.agent(klines, concurrency=1)
    async def process_klines(stream):
        """Group commit: batches are processed and their signals produced back to back while more klines
        are queued; then the group is made durable in order:
          1. wait until every signal and dead letter of the group is acknowledged,
          2. produce the newest state of each touched symbol to the table's changelog, wait for those,
          3. update the table, ack the group's klines (their offsets may now be committed).
        A signal leaves within librdkafka's linger (1 ms) of its batch, not after earlier batches' round
        trips; under load a group costs two broker round trips, however many batches it holds. A group
        closes as soon as nothing is queued, so an idle stream or a rebalance never holds acks back.
        """
        batches = ReadyBatches(stream, BATCH_MAX)
        group: list[list] = []
        async for batch in batches:
            t0 = time.perf_counter()
            records = [(e.message.key, e.message.value) for e in batch]
            result = processor.process(records, get_state)
            t1 = time.perf_counter()
            for sym, raw in result.signals:
                delivery.produce(signals_topic, sym.encode(), raw)
            now = int(time.time() * 1000)
            for reason, key, raw in result.rejects:
                rej = make_reject("processors", reason, raw, key, now, klines_topic)
                delivery.produce(dlq_topic, b"processors", encode_reject(rej))
            unconfirmed.update(result.states)
            group.append(batch)
            stats["klines"] += result.klines
            stats["signals"] += len(result.signals)
            stats["rejects"] += len(result.rejects)
            stats["batches"] += 1
            stats["process_s"] += t1 - t0
            if batches.waiting and sum(map(len, group)) < GROUP_MAX:
                continue            # more is queued: processing it overlaps this group's delivery
            await delivery.flush()  # 1. the group's signals are acknowledged ...
            partition_of = {e.message.key: e.message.partition for done in group for e in done}
            for symbol, blob in unconfirmed.items():
                # 2. ... before the state that implies them may become recoverable. The changelog
                # partition is the source partition of the symbol's klines (co-partitioning), as
                # Table.__setitem__ would pick it.
                key = symbol.encode()
                delivery.produce(changelog_topic, key, blob, partition=partition_of[key])
            await delivery.flush()
            for symbol, blob in unconfirmed.items():
                # 3. what Table.__setitem__ does besides the changelog send it left to us: a plain
                # (not windowed) table keeps no TTL bookkeeping, and no sensors are used here
                store[symbol.encode()] = blob
            unconfirmed.clear()
            for done in group:
                await batches.ack(done)
            group.clear()
            stats["deliver_s"] += time.perf_counter() - t1

    @app.on_before_shutdown.connect
    async def _close_delivery(sender, **kwargs):
        delivery.close()

    stats_file = os.environ.get("SMC_STATS_FILE")
    if stats_file:  # tests and the main job read per-worker progress from here
        @app.timer(0.5)
        async def _dump_stats():
            tmp = stats_file + ".tmp"
            with open(tmp, "wb") as fh:
                fh.write(orjson.dumps(stats))
            os.replace(tmp, stats_file)

    @app.on_rebalance_complete.connect
    async def _after_rebalance(sender, **kwargs):
        processor.forget()   # the table's bytes are the truth after a rebalance
        stats["partitions"] = sum(1 for tp in app.consumer.assignment() if tp.topic == klines.get_topic_name())

    return app
