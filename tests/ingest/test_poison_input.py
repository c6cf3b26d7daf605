"""Poison input: dlq records stay small whatever they carry, and the decoders name the field of an
unknown key or a non-finite number."""
from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from schemas import Kline, SchemaError, decode_kline, decode_reject, encode_kline, encode_reject, make_reject
from schemas.reject import RAW_CAP, REASON_CAP

K = Kline("BTCUSDT", "1m", 60_000, 119_999, 10.0, 11.0, 9.0, 10.5, 1.0, source="replay")


def test_a_900_kb_reject_is_cut_and_keeps_length_and_hash():
    raw = b'{"symbol":"' + b"X" * 900_000 + b'"}'
    rej = make_reject("processors", "Kline.symbol=" + "X" * 900_000 + ": bad", raw, b"BTCUSDT", 1, "klines", 3, 7)
    out = encode_reject(rej)
    assert len(out) < 100_000                         # far under the broker's 1 MB limit
    assert base64.b64decode(rej.raw_b64) == raw[:RAW_CAP]
    assert rej.raw_len == len(raw) and rej.raw_sha256 == hashlib.sha256(raw).hexdigest()
    assert len(rej.reason) <= REASON_CAP + 40 and rej.reason.endswith(f"({13 + 900_000 + 5} chars)")
    back = decode_reject(out)
    assert back == rej


def test_a_small_reject_is_whole():
    raw = encode_kline(K)
    rej = make_reject("audit", "why", raw, "BTCUSDT", 1)
    assert rej.raw == raw and rej.raw_len == len(raw) and rej.reason == "why"


def test_an_old_reject_without_length_and_hash_still_decodes():
    old = orjson.loads(encode_reject(make_reject("audit", "why", b"x", "", 1)))
    del old["raw_len"], old["raw_sha256"]
    assert decode_reject(orjson.dumps(old)).raw == b"x"


def test_unknown_fields_are_rejected_by_name():
    obj = orjson.loads(encode_kline(K))
    obj["leverage"] = 100
    with pytest.raises(SchemaError, match=r"Kline\.leverage=100.*unknown field"):
        decode_kline(orjson.dumps(obj))
    with pytest.raises(SchemaError, match="unknown field"):
        decode_kline(dict(obj))


@pytest.mark.parametrize("token,field", [("NaN", "close"), ("Infinity", "high"), ("-Infinity", "volume")])
def test_non_finite_numbers_name_the_field(token, field):
    raw = encode_kline(K).replace(f'"{field}":'.encode() + str(getattr(K, field)).encode(),
                                  f'"{field}":{token}'.encode())
    assert token.encode() in raw
    with pytest.raises(SchemaError) as err:
        decode_kline(raw)
    assert f"Kline.{field}=" in str(err.value) and "not finite" in str(err.value)
    assert "malformed JSON" not in str(err.value)


def test_broken_json_is_still_malformed():
    with pytest.raises(SchemaError, match="malformed JSON"):
        decode_kline(b'{"symbol": NaN,')
