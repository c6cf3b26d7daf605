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
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import KafkaError, Message

from infra import kafka_io
from infra.settings import Settings


class DeliveryError(RuntimeError):
    """Records the broker did not acknowledge: the batch must not count as processed."""


class BatchDelivery:
    def __init__(self, settings: Settings, client_id: str, flush_timeout: float = 60.0) -> None:
        # Reports for failed records only: a report is a Python callback that needs the GIL in the flushing
        # thread, and hundreds of them per batch queued behind the busy event loop (5 ms GIL switch interval)
        # made a 2 ms flush take ~25 ms.
        self._producer = kafka_io.producer(settings, **{"client.id": client_id, "linger.ms": 1,
                                                        "delivery.report.only.error": True})
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="smc-delivery")
        self._errors: list[str] = []
        self._timeout = flush_timeout

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:   # runs in the flushing thread; read only after flush() returned
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def produce(self, topic: str, key: bytes, value: bytes, partition: int = -1) -> None:
        """partition -1: the producer's partitioner picks it from the key."""
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, partition=partition, on_delivery=self._on_delivery)
                return
            except BufferError:          # local queue full: let librdkafka drain a little
                self._producer.poll(0.05)

    async def flush(self) -> None:
        """Return once every record produced so far is acknowledged; raise DeliveryError otherwise."""
        loop = asyncio.get_running_loop()
        left = await loop.run_in_executor(self._thread, self._producer.flush, self._timeout)
        errors, self._errors = self._errors, []
        if left:
            errors.append(f"{left} record(s) not acknowledged within {self._timeout:.0f} s")
        if errors:
            raise DeliveryError(f"{len(errors)} record(s) not delivered, first: {errors[0]}")

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
        self._thread.shutdown(wait=False)
