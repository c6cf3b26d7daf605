"""Delivery of a batch's output records: one confluent-kafka producer, awaited acknowledgements.

The processors agent writes three kinds of records per batch: signals, dead letters and the new
per-symbol state (the table's changelog). Faust's own send path costs ~50 us of Python per record on
the event loop (aiokafka's accumulator, a future per message); librdkafka does the same work in C
off the event loop. `flush()` waits in a helper thread, so the loop keeps fetching while the broker
acknowledges. The producer is idempotent with acks=all (infra.kafka_io.producer): a retried batch
is neither duplicated nor reordered within a partition, and keys land on the partitions Faust's
Java-compatible murmur2 partitioner would pick.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import KafkaError, KafkaException, Message

from infra import kafka_io
from infra.settings import Settings

log = logging.getLogger("smc.processors")


class DeliveryError(RuntimeError):
    """Records the broker did not acknowledge: the batch must not count as processed."""


class BatchDelivery:
    """timeout: how long a record may wait for its acknowledgement, retried by librdkafka meanwhile
    (message.timeout.ms): a broker outage shorter than that loses and doubles nothing (idempotent
    producer); a longer one raises DeliveryError and the worker stops (processors.app.fail_loud)."""

    def __init__(self, settings: Settings, client_id: str, timeout: float | None = None) -> None:
        self._timeout = float(settings.delivery_timeout_s if timeout is None else timeout)
        # Reports for failed records only: a report is a Python callback that needs the GIL in the flushing
        # thread, and hundreds of them per batch queued behind the busy event loop (5 ms GIL switch interval)
        # made a 2 ms flush take ~25 ms.
        self._producer = kafka_io.producer(settings, **{"client.id": client_id, "linger.ms": 1,
                                                        "delivery.report.only.error": True,
                                                        "message.timeout.ms": int(self._timeout * 1000)})
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="smc-delivery")
        self._errors: list[str] = []
        self.waiting_since = 0.0   # monotonic start of a flush still waiting (0: none); health and logs

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:   # runs in the flushing thread; read only after flush() returned
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def produce(self, topic: str, key: bytes, value: bytes, partition: int = -1) -> None:
        """partition -1: the producer's partitioner picks it from the key."""
        start = time.monotonic()
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, partition=partition, on_delivery=self._on_delivery)
                return
            except BufferError:          # local queue full: let librdkafka drain a little
                if time.monotonic() - start > self._timeout:
                    raise DeliveryError(f"the producer queue stayed full for {self._timeout:.0f} s "
                                        f"(SMC_DELIVERY_TIMEOUT_S): the broker is not taking records") from None
                self._producer.poll(0.05)

    async def flush(self) -> None:
        """Return once every record produced so far is acknowledged; raise DeliveryError otherwise.

        Waits out a broker outage up to the record timeout (librdkafka fails a record at its
        message.timeout.ms; this never gives up on a record librdkafka still retries)."""
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        self.waiting_since = start
        try:
            while True:
                left = await loop.run_in_executor(self._thread, self._producer.flush, 10.0)
                waited = time.monotonic() - start
                if not left or self._errors:
                    break
                if waited > self._timeout + 30:     # librdkafka should have failed them by now
                    self._errors.append(f"{left} record(s) not acknowledged within {waited:.0f} s")
                    break
                log.warning("waiting for the broker: %d record(s) unacknowledged for %.0f s (gives up after %.0f s)",
                            left, waited, self._timeout)
        finally:
            self.waiting_since = 0.0
        errors, self._errors = self._errors, []
        if errors:
            raise DeliveryError(f"{len(errors)} record(s) not delivered, first: {errors[0]}")

    def broker_reachable(self, timeout: float = 2.0) -> bool:
        """One metadata request: does the broker answer now? (The offset gate asks before it counts a
        seek: during an outage a seek brings nothing, which proves no gap.)"""
        try:
            self._producer.list_topics(timeout=timeout)
            return True
        except KafkaException:
            return False

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
        self._thread.shutdown(wait=False)
