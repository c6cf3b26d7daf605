"""The Faust (faust-streaming) application: `klines` -> per-symbol SMC state -> `signals`.

Ordering that makes restarts lose nothing and double nothing:
  1. decode, update the per-symbol state, score the batch (processors.core, no I/O);
  2. send the batch's signals and WAIT for the broker's acknowledgement;
  3. only then write the new state bytes into the table (its changelog is the recovery source).
Faust flushes the producer before it commits source offsets. So the state never runs ahead of the
signals it implies: after a crash, re-delivered klines either are re-processed from an older state
(same bytes out, the same signal_id: consumers dedupe by id) or are recognised as duplicates.
The stateful agent runs at concurrency 1 (faust-streaming #606: offsets can be committed past an
in-flight message with concurrency > 1). M5 bars are closed by the M1 bar that ends them, inside the
per-symbol state; nothing relies on on_window_close (#193, #250).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import orjson

import weakref

import faust
from faust.streams import _current_event

from infra.settings import Settings
from processors import faust_guards
from processors.core import KlineProcessor
from processors.scoring import load_scorer
from schemas import encode_reject, make_reject, topic_name

log = logging.getLogger("smc.processors")

BATCH_MAX = 500          # klines per batch: amortizes LightGBM and producer round-trips
BATCH_WITHIN = 0.02      # seconds to wait for a batch to fill: live latency stays in milliseconds


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
        broker_max_poll_records=BATCH_MAX,
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
    stats = {"klines": 0, "signals": 0, "rejects": 0, "batches": 0, "partitions": 0}
    app.smc_stats = stats  # type: ignore[attr-defined]

    def get_state(symbol: str) -> bytes | None:
        return state_table.get(symbol.encode())

    @app.agent(klines, concurrency=1)
    async def process_klines(stream):
        async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN):
            records = [(e.message.key, e.message.value) for e in batch]
            result = processor.process(records, get_state)
            pending = [await signals.send(key=sym.encode(), value=raw, force=True) for sym, raw in result.signals]
            now = int(time.time() * 1000)
            for reason, key, raw in result.rejects:
                rej = make_reject("processors", reason, raw, key, now, klines.get_topic_name())
                pending.append(await dlq.send(key=b"processors", value=encode_reject(rej), force=True))
            if pending:
                await asyncio.gather(*pending)   # delivered before the state moves on
            last_event = {e.message.key: e for e in batch}
            for symbol, blob in result.states.items():
                key = symbol.encode()
                # the changelog partition is the source partition of this symbol's klines (co-partitioning);
                # Faust reads it from the current event, which take_events() does not set for a batch
                _current_event.set(weakref.ref(last_event[key]))
                state_table[key] = blob
            _current_event.set(None)
            stats["klines"] += result.klines
            stats["signals"] += len(result.signals)
            stats["rejects"] += len(result.rejects)
            stats["batches"] += 1

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
