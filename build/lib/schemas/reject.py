"""Reject: a record that could not be processed, with the reason, bound for the `dlq` topic."""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from schemas.codec import decode_as, encode

SCHEMA_VERSION = 1
# A dlq record must stay far under the broker's 1 MB message limit whatever it rejects (a 900 KB
# record embedded whole in base64 overflowed it and crashed the agent): the raw bytes are cut to
# RAW_CAP, the reason to REASON_CAP, and the original length and sha256 identify the whole record.
RAW_CAP = 64 * 1024
REASON_CAP = 2048


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
    raw_len: int = -1       # length of the original bytes (raw_b64 holds at most RAW_CAP of them)
    raw_sha256: str = ""    # sha256 (hex) of the original bytes

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)


def make_reject(stage: str, reason: str, raw: bytes | str | None, key: str | bytes | None, ts: int,
                topic: str = "", partition: int = -1, offset: int = -1) -> Reject:
    if isinstance(raw, str):
        raw = raw.encode()
    if isinstance(key, bytes):
        key = key.decode(errors="replace")
    raw = raw or b""
    if len(reason) > REASON_CAP:
        reason = reason[:REASON_CAP] + f"... ({len(reason)} chars)"
    return Reject(stage=stage, reason=reason, key=(key or "")[:256], raw_b64=base64.b64encode(raw[:RAW_CAP]).decode(),
                  ts=ts, topic=topic, partition=partition, offset=offset, raw_len=len(raw),
                  raw_sha256=hashlib.sha256(raw).hexdigest())


def decode_reject(raw: bytes | str | dict) -> Reject:
    return decode_as(Reject, raw)


def encode_reject(r: Reject) -> bytes:
    return encode(r)
