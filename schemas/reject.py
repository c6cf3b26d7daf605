"""Reject: a record that could not be processed, with the reason, bound for the `dlq` topic."""
from __future__ import annotations

import base64
from dataclasses import dataclass

from schemas.codec import decode_as, encode

SCHEMA_VERSION = 1


@dataclass(slots=True, frozen=True)
class Reject:
    stage: str          # ingest.ws, ingest.replay, processors, executor, audit ...
    reason: str         # the SchemaError text: names the field and the value
    key: str            # the original message key (symbol) or ""
    raw_b64: str        # the original bytes, base64
    ts: int             # when it was rejected (ms UTC)
    topic: str = ""
    partition: int = -1
    offset: int = -1
    v: int = SCHEMA_VERSION

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)


def make_reject(stage: str, reason: str, raw: bytes | str | None, key: str | bytes | None, ts: int,
                topic: str = "", partition: int = -1, offset: int = -1) -> Reject:
    if isinstance(raw, str):
        raw = raw.encode()
    if isinstance(key, bytes):
        key = key.decode(errors="replace")
    return Reject(stage=stage, reason=reason, key=key or "", raw_b64=base64.b64encode(raw or b"").decode(),
                  ts=ts, topic=topic, partition=partition, offset=offset)


def decode_reject(raw: bytes | str | dict) -> Reject:
    return decode_as(Reject, raw)


def encode_reject(r: Reject) -> bytes:
    return encode(r)
