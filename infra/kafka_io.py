"""Thin confluent-kafka adapters: topic creation from the registry, producers, consumers, the DLQ."""
from __future__ import annotations

import logging
import time
from typing import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from infra.settings import Settings
from schemas import encode_reject, make_reject, registry, topic_name, group_name

log = logging.getLogger("smc.kafka")


def _quiet() -> logging.Logger:
    q = logging.getLogger("smc.kafka.client")
    q.propagate = False
    q.addHandler(logging.NullHandler())
    return q


def admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "logger": _quiet()})


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answers at the configured bootstrap: said within seconds, with the fix."""


_FIX = "set SMC_KAFKA_BOOTSTRAP to the broker's host:port, or `smc broker start` starts the local one"


def require_broker(settings: Settings, timeout: float = 3.0) -> str:
    """Fail fast, before any work: within about `timeout` s, a BrokerUnavailable naming the bootstrap and
    the fix unless a broker answers a metadata request at settings.kafka_bootstrap. Returns what answered
    (cluster, brokers and, when the broker reports it, its inter-broker protocol version) for the log."""
    bootstrap = settings.kafka_bootstrap
    deadline = time.monotonic() + timeout
    endpoints = [e.strip() for e in bootstrap.split(",") if e.strip()]
    reasons = []
    for endpoint in endpoints:   # TCP first: a refused port is said at once, not after librdkafka's retries
        reason = _tcp_refusal(endpoint, max(0.2, deadline - time.monotonic()))
        if reason is None:
            break
        reasons.append(f"{endpoint}: {reason}")
    else:
        raise BrokerUnavailable(f"no Kafka broker answers at {bootstrap} ({'; '.join(reasons) or 'no host:port given'}); {_FIX}")
    adm = admin(settings)
    try:
        md = adm.list_topics(timeout=max(0.5, deadline - time.monotonic()))
    except KafkaException as exc:
        raise BrokerUnavailable(f"no Kafka broker answers at {bootstrap} ({exc.args[0].str()}); {_FIX}") from None
    return f"{len(md.brokers)} broker(s), cluster {md.cluster_id}, {broker_version(adm, md, timeout=2.0)}"


def _tcp_refusal(endpoint: str, timeout: float) -> str | None:
    """None when host:port accepts a TCP connection within `timeout`, else why not."""
    import socket
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        return "not host:port"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def broker_version(adm: AdminClient, md, timeout: float) -> str:
    """What the broker says of its version: Kafka exposes no version call to clients; its
    `inter.broker.protocol.version` config (e.g. 3.9-IV0, the release's protocol by default; Kafka 3.x)
    is the closest. Best effort: "version not reported" when the config is absent or not readable."""
    from confluent_kafka.admin import ConfigResource, ResourceType
    if not md.brokers:
        return "version not reported"
    resource = ConfigResource(ResourceType.BROKER, str(min(md.brokers)))
    try:
        configs = adm.describe_configs([resource], request_timeout=timeout)[resource].result(timeout=timeout)
    except Exception:   # an ACL or an old broker: the version is a nicety, the metadata answer was the check
        return "version not reported"
    entry = configs.get("inter.broker.protocol.version")
    return f"inter.broker.protocol.version {entry.value}" if entry is not None and entry.value else \
        "version not reported"


def topic(settings: Settings, base: str) -> str:
    return topic_name(base, settings.namespace)


def group(settings: Settings, base: str) -> str:
    return group_name(base, settings.namespace)


def ensure_topics(settings: Settings, bases: Iterable[str] | None = None, timeout: float = 30.0) -> list[str]:
    """Create the registry's topics (in the settings' namespace) that do not exist yet."""
    specs = registry(settings.partitions)
    bases = list(bases) if bases is not None else list(specs)
    adm = admin(settings)
    try:
        existing = set(adm.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._TRANSPORT:
            raise
        raise BrokerUnavailable(f"no Kafka broker answers at {settings.kafka_bootstrap} within {timeout:g} s "
                                f"({exc.args[0].str()}); {_FIX}") from None
    new = []
    for base in bases:
        spec = specs[base]
        name = topic(settings, base)
        if name in existing:
            continue
        config = {"cleanup.policy": spec.cleanup, "retention.ms": str(spec.retention_ms)}
        new.append(NewTopic(name, num_partitions=spec.partitions, replication_factor=1, config=config))
    if new:
        _create_topics(adm, new, timeout)
    return [topic(settings, b) for b in bases]


def _create_topics(adm: AdminClient, new: list[NewTopic], timeout: float) -> None:
    """Create topics (one created meanwhile by another process is fine) and wait until they are usable."""
    for _name, fut in adm.create_topics(new, operation_timeout=timeout).items():
        try:
            fut.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    _wait_topics(adm, [t.topic for t in new], timeout)


class TopicMismatch(RuntimeError):
    """An existing topic whose layout (partitions) the app cannot work with."""


def ensure_exact_topics(settings: Settings, names: dict[str, int], config: dict[str, str] | None = None,
                        timeout: float = 30.0) -> None:
    """Create the topics {name: partitions} that do not exist yet (with `config`), and refuse (TopicMismatch)
    one that exists with another partition count.

    For changelogs: a worker that subscribes before its table's changelog exists recovers nothing from
    it (Faust logs "Ignoring missing topic" and carries on with an empty table), and a changelog with
    other partitions than its source topic scatters a symbol's state. Both are silent; this is loud.
    """
    adm = admin(settings)
    md = adm.list_topics(timeout=timeout).topics
    for name, partitions in names.items():
        if name in md and md[name].partitions and len(md[name].partitions) != partitions:
            raise TopicMismatch(f"topic {name} has {len(md[name].partitions)} partitions, the app needs {partitions} "
                                f"(SMC_PARTITIONS): delete it or run with the partition count it was made with")
    new = [NewTopic(n, num_partitions=p, replication_factor=1, config=dict(config or {}))
           for n, p in names.items() if n not in md]
    if new:
        _create_topics(adm, new, timeout)
        # a concurrent creator may have used another partition count: check what exists now
        ensure_exact_topics(settings, {t.topic: t.num_partitions for t in new}, config, timeout)


def _wait_topics(adm: AdminClient, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = adm.list_topics(timeout=timeout)
        if all(n in md.topics and not md.topics[n].error and md.topics[n].partitions for n in names):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics {names} not ready")


def delete_namespace(settings: Settings) -> None:
    """Drop every topic of an isolated run (tests, debugging replays)."""
    if not settings.namespace:
        raise ValueError("refusing to delete the production (un-namespaced) topics")
    adm = admin(settings)
    names = [t for t in adm.list_topics(timeout=10).topics if t.startswith(settings.namespace + ".")]
    if names:
        for fut in adm.delete_topics(names, operation_timeout=30).values():
            try:
                fut.result()
            except KafkaException:
                pass


def producer(settings: Settings, **overrides) -> Producer:
    """Idempotent, acks=all producer: retries never duplicate or reorder within a partition."""
    conf = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        # murmur2 = the Java client's partitioner, so every client maps a symbol to the same partition
        "partitioner": "murmur2_random",
        "logger": _quiet(),
    }
    conf.update(overrides)
    return Producer(conf)


def consumer(settings: Settings, group_base: str, **overrides) -> Consumer:
    conf = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group(settings, group_base),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "logger": _quiet(),
    }
    conf.update(overrides)
    return Consumer(conf)


def send_reject(prod: Producer, settings: Settings, stage: str, reason: str, raw: bytes | str | None,
                key: str | bytes | None, src_topic: str = "", partition: int = -1, offset: int = -1) -> None:
    """Send a bad record to the DLQ with its reason; never raises for the caller's stream."""
    rej = make_reject(stage, reason, raw, key, int(time.time() * 1000), src_topic, partition, offset)
    prod.produce(topic(settings, "dlq"), key=stage.encode(), value=encode_reject(rej))


_LEADER_PENDING = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                   KafkaError.UNKNOWN_TOPIC_OR_PART)


def watermarks(consumer, name: str, partition: int, timeout: float = 30.0) -> tuple[int, int]:
    """(low, high) of one partition; a topic created a moment ago has no elected leader yet (NOT_LEADER,
    LEADER_NOT_AVAILABLE, UNKNOWN_TOPIC_OR_PART): that passes, so it is waited out, up to `timeout`."""
    from confluent_kafka import TopicPartition
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = max(1.0, deadline - time.monotonic())
            return consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=left)
        except KafkaException as exc:
            if exc.args[0].code() not in _LEADER_PENDING or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def end_offsets(settings: Settings, base: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """{partition: (low, high)} watermarks of a topic."""
    name = topic(settings, base)
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "smc-watermarks", "logger": _quiet()})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                md = c.list_topics(name, timeout=timeout)
                parts = md.topics[name].partitions if name in md.topics else {}
                return {p: watermarks(c, name, p, max(1.0, deadline - time.monotonic())) for p in parts}
            except KafkaException as exc:
                # a topic created a moment ago has no elected leader yet: that passes, so wait for it
                if exc.args[0].code() not in _LEADER_PENDING or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        c.close()


def topic_size(settings: Settings, base: str) -> int:
    return sum(hi - lo for lo, hi in end_offsets(settings, base).values())


def wait_for_size(settings: Settings, base: str, n: int, timeout: float = 120.0, poll: float = 0.25) -> int:
    """Block until a topic holds at least n records (or the timeout passes); returns the size seen."""
    deadline = time.monotonic() + timeout
    size = topic_size(settings, base)
    while size < n and time.monotonic() < deadline:
        time.sleep(poll)
        size = topic_size(settings, base)
    return size


def read_topic(settings: Settings, base: str, timeout: float = 60.0) -> list:
    """Every record of a topic from the beginning up to its end at call time, as confluent Messages.

    Reads by assignment (no consumer group, nothing committed), so it never disturbs a running app.
    """
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    name = topic(settings, base)
    ends = {p: hi for p, (lo, hi) in end_offsets(settings, base).items() if hi > lo}
    if not ends:
        return []
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "smc-reader", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "logger": _quiet()})
    out = []
    try:
        c.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in ends])
        remaining = dict(ends)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for m in c.consume(num_messages=10_000, timeout=0.5):
                if m.error():
                    continue
                if m.partition() in remaining:
                    out.append(m)
            # positions, not last offsets: transaction markers occupy offsets no message carries
            for tp in c.position([TopicPartition(name, p) for p in remaining]):
                if tp.offset >= remaining[tp.partition]:
                    del remaining[tp.partition]
        if remaining:
            raise TimeoutError(f"read_topic({name}) did not reach the end of partitions {sorted(remaining)}")
    finally:
        c.close()
    return out
