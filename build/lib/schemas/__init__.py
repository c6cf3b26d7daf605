"""Message types shared by every part, their validating decoders and the topic registry."""
from schemas.errors import SchemaError
from schemas.codec import encode, decode_as
from schemas.kline import Kline, decode_kline, encode_kline, interval_ms, interval_name
from schemas.signal import Signal, decode_signal, encode_signal, make_signal_id
from schemas.reject import Reject, make_reject, decode_reject, encode_reject
from schemas.trading import (Decision, Order, Fill, Position, Equity, Alert, client_order_id, make_alert,
                             decode_decision, decode_order, decode_fill, decode_position, decode_equity,
                             decode_alert)
from schemas.topics import TopicSpec, registry, topic_name, group_name

__all__ = [n for n in dir() if not n.startswith("_")]
