"""Topic replay for debugging: re-run the processors over a recorded run's klines and diff the signals.

The run's `klines` records are copied byte for byte (per partition, in offset order) into an isolated
namespace, a fresh processors worker runs there with the code as it is now, and its signals are
compared record by record with the original run's, over a chosen range of bar open times. State
needs history, so every kline up to the end of the range is replayed; only the range is diffed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from infra import kafka_io
from infra.services import ProcessorWorker
from processors.lookahead import value_diff   # one definition of "how two signals differ", by field
from infra.settings import Settings, load_settings


@dataclass
class Change:
    signal_id: str
    fields: list[tuple[str, object, object]]   # (field, original, replayed)


@dataclass
class DiffReport:
    source: str
    replay: str
    compared: int = 0
    identical_records: int = 0
    missing: list[str] = field(default_factory=list)     # in the original, not in the replay
    extra: list[str] = field(default_factory=list)       # in the replay, not in the original
    changes: list[Change] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (self.missing or self.extra or self.changes) and self.compared > 0

    def render(self, limit: int = 10) -> str:
        head = (f"replay {self.replay} vs {self.source}: {self.compared} signals compared, "
                f"{self.identical_records} identical, {len(self.changes)} changed, "
                f"{len(self.missing)} missing, {len(self.extra)} extra")
        if self.identical:
            return head + "\nidentical"
        lines = [head]
        for ch in self.changes[:limit]:
            first = ", ".join(f"{f}: {a!r} -> {b!r}" for f, a, b in ch.fields[:4])
            lines.append(f"  {ch.signal_id}: {first}" + (" ..." if len(ch.fields) > 4 else ""))
        lines += [f"  missing {sid}" for sid in self.missing[:limit]]
        lines += [f"  extra {sid}" for sid in self.extra[:limit]]
        return "\n".join(lines)


def diff_signals(original: dict[str, bytes], replayed: dict[str, bytes], source: str, replay: str) -> DiffReport:
    rep = DiffReport(source=source, replay=replay)
    rep.missing = sorted(set(original) - set(replayed))
    rep.extra = sorted(set(replayed) - set(original))
    for sid in sorted(set(original) & set(replayed)):
        rep.compared += 1
        if original[sid] == replayed[sid]:
            rep.identical_records += 1
            continue
        rep.changes.append(Change(sid, value_diff(original[sid], replayed[sid])))
    return rep


def _signals_in_range(settings: Settings, start: int | None, end: int | None) -> dict[str, bytes]:
    out = {}
    for m in kafka_io.read_topic(settings, "signals"):
        head = orjson.loads(m.value())
        # bars that open at/after start and close before end: a higher-timeframe bar that straddles
        # the end of the replayed klines cannot close in the replay
        if (start is None or head.get("open_time", 0) >= start) and (end is None or head.get("close_time", 0) < end):
            out[head["signal_id"]] = m.value()
    return out


def run_settings(source: Settings) -> Settings:
    """The settings a run was made with (saved by the main job), so a replay scores the same way."""
    saved = Path(source.data_dir) / "runs" / source.namespace / "settings.env.json"
    if saved.exists():
        env = orjson.loads(saved.read_bytes())
        env.pop("SMC_NAMESPACE", None)
        env.pop("SMC_DATA_DIR", None)
        env["SMC_KAFKA_BOOTSTRAP"] = source.kafka_bootstrap
        return load_settings(env=env).with_(namespace=source.namespace, data_dir=source.data_dir)
    return source


def replay_and_diff(source: Settings, start: int | str | None = None, end: int | str | None = None,
                    into: str | None = None, extra_env: dict | None = None, timeout: float = 3600) -> DiffReport:
    from infra.pipeline import _ms
    start, end = _ms(start), _ms(end)
    source = run_settings(source)
    target = source.with_(namespace=into or f"{source.namespace}.replay-{int(time.time())}",
                          data_dir=str(Path(source.data_dir) / "replays"))
    if kafka_io.topic_size(source, "klines") == 0:
        raise ValueError(f"namespace {source.namespace!r} has no klines on {source.kafka_bootstrap}")
    kafka_io.ensure_topics(target, ["klines", "signals", "dlq"])
    prod = kafka_io.producer(target)
    dest = kafka_io.topic(target, "klines")
    by_partition: dict[int, list] = {}
    for m in kafka_io.read_topic(source, "klines"):
        by_partition.setdefault(m.partition(), []).append(m)
    n = 0
    for part in sorted(by_partition):
        for m in sorted(by_partition[part], key=lambda x: x.offset()):
            if end is not None and orjson.loads(m.value()).get("open_time", 0) >= end:
                continue
            prod.produce(dest, key=m.key(), value=m.value(), partition=part)
            prod.poll(0)
            n += 1
    prod.flush(60)
    worker = ProcessorWorker(target, name=target.namespace, extra_env=extra_env)
    try:
        worker.wait_klines(n, timeout=timeout)
    finally:
        worker.stop()
    return diff_signals(_signals_in_range(source, start, end), _signals_in_range(target, start, end),
                        source.namespace, target.namespace)
