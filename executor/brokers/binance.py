"""Binance USDT-M futures broker over the signed REST API (testnet by default).

* Signing: HMAC-SHA256 of the full query string (with timestamp and recvWindow), hex, appended as
  `signature`; the API key travels in the X-MBX-APIKEY header. All parameters go in the query string
  (the body stays empty), so what is signed is exactly what is sent.
* Orders: entries and time exits are MARKET orders (`newOrderRespType=RESULT`, so the answer carries
  the fill), exits are reduceOnly; stop and target are conditional orders on the Algo Order API
  (`POST /fapi/v1/algoOrder`, algoType=CONDITIONAL, STOP_MARKET / TAKE_PROFIT_MARKET, triggerPrice,
  clientAlgoId, reduceOnly). Client ids come from schemas.trading.client_order_id(signal_id, leg).
* Send once: before sending, every id is looked up (GET /fapi/v1/order?origClientOrderId= or
  GET /fapi/v1/algoOrder?clientAlgoId=): after a crash-restart the same id is re-submitted by the
  deterministic engine and must not become a second order. After an unknown outcome (client
  timeout, HTTP 5xx, -1000, -1006, -1007: Binance: "the request may have been executed") the id is
  looked up repeatedly and NOT re-sent while the original request can still execute: Binance
  refuses a request that reaches it after `timestamp + recvWindow`, so "not found" only means "not
  executed" once that moment (exchange clock) plus `unknown_margin_s` has passed. Only then is the
  order re-sent, deliberately, with the SAME client id (once). After a restart the same holds for
  the pre-send lookup: the killed process may have a request in flight for that id, so "not found" is
  trusted only from start-up + recvWindow + margin (`restart_guard_until`), for MARKET and algo orders
  alike (Binance refuses a second OPEN algo order with the same clientAlgoId, -4116, but not one that
  arrives after the first was cancelled or fired: a stop cancelled when the replayed exit closed the
  position came back as a second, orphaned stop in the SIGKILL chaos test).
  -1021 (timestamp outside recvWindow) resyncs the clock from /fapi/v1/time and
  retries once (the exchange rejected the request unprocessed, so that is safe).
* Transport: one pooled keep-alive HTTP session (httpx; TCP+TLS set up once per connection, not per
  request). A failure to connect means nothing left (not an unknown outcome); a connection lost after
  an order left, or no answer in `timeout`, is an unknown outcome. Every lost connection counts in
  `disconnects`, after which the broker reconciles with the exchange (executor.reconcile).
* Limits: X-MBX-USED-WEIGHT-1M and X-MBX-ORDER-COUNT-10S/1M are read from every answer; a request
  waits when the next one would cross `weight_limit` / `orders_10s` / `orders_1m` (a safety margin
  below Binance's 2 400 / 300 / 1 200); HTTP 429 waits Retry-After (bounded) and retries once, 418
  (IP ban) raises.
* Secrets: the key and secret live in private attributes, never in repr, logs, exceptions (URLs with
  signatures are never formatted into messages) or records.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import time
import urllib.parse
from decimal import Decimal
from typing import Any, Callable

import httpx
import orjson

from executor.brokers.base import Broker, BrokerError, FillEvent, OrderUpdate
from executor.protection import STOP_LEGS
from executor.reconcile import Action, ExchangeSnapshot, PositionWatch, apply, held_positions, holdings, plan, reconcile_order
from schemas.trading import Order, client_order_id

log = logging.getLogger("smc.executor.binance")
# httpx logs every request line at INFO, and the URL carries the signature: never in our logs
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

LIVE_URL = "https://fapi.binance.com"
TESTNET_URL = "https://testnet.binancefuture.com"
LIVE_WS_URL = "wss://fstream.binance.com"              # user data stream: /ws/<listenKey>
TESTNET_WS_URL = "wss://fstream.binancefuture.com"     # USD-M futures testnet streams


# --- errors -------------------------------------------------------------------------------------
class BinanceError(BrokerError):
    """An error answer from Binance: `code` (Binance's), `http_status`, the endpoint (no parameters).
    `error_class` says what to do about it (see error_class()); `halt` is read by the engine."""

    def __init__(self, code: int, msg: str, http_status: int = 0, endpoint: str = "") -> None:
        self.code, self.msg, self.http_status, self.endpoint = code, msg, http_status, endpoint
        self.error_class = error_class(code, http_status)
        self.halt = self.error_class == HALT
        super().__init__(f"Binance {code} (HTTP {http_status}) on {endpoint}: {msg}")


class UnknownOutcome(BinanceError):
    """Timeout, HTTP 5xx, -1000, -1006, -1007: the request may or may not have been executed."""


class TimestampOutsideRecvWindow(BinanceError):      # -1021
    pass


class InvalidSignature(BinanceError):                # -1022
    pass


class InvalidApiKey(BinanceError):                   # -2014, -2015
    pass


class InvalidSymbol(BinanceError):                   # -1121
    pass


class InsufficientMargin(BinanceError):              # -2019
    pass


class OrderRejected(BinanceError):                   # -2010, -2021, -2022, -4164 ...
    pass


class CancelRejected(BinanceError):                  # -2011
    pass


class NoSuchOrder(BinanceError):                     # -2013
    pass


class BadRequest(BinanceError):                      # -1100 .. -1130, -1111 precision, -4xxx parameter errors
    pass


class RateLimited(BinanceError):                     # HTTP 429 / -1003
    def __init__(self, *a, retry_after: float = 0.0, **kw) -> None:
        super().__init__(*a, **kw)
        self.retry_after = retry_after


class IpBanned(BinanceError):                        # HTTP 418
    pass


ERRORS: dict[int, type[BinanceError]] = {
    -1000: UnknownOutcome, -1006: UnknownOutcome, -1007: UnknownOutcome, -1003: RateLimited, -1021: TimestampOutsideRecvWindow,
    -1022: InvalidSignature, -2014: InvalidApiKey, -2015: InvalidApiKey, -1121: InvalidSymbol,
    -2019: InsufficientMargin, -2010: OrderRejected, -2021: OrderRejected, -2022: OrderRejected,
    -2011: CancelRejected, -2013: NoSuchOrder, -4164: OrderRejected, -4116: OrderRejected,
}


# --- error classes: what the executor does about an error (one table, pure) ---------------------------
RETRY, UNKNOWN, REJECTED, HALT = "retry", "outcome_unknown", "rejected", "halt"
HALT_CODES = (-1022, -2014, -2015)          # signature / API key / permissions: nothing will work until fixed
RETRY_CODES = (-1003, -1021)                # too many requests; timestamp (resync the clock, then retry)
UNKNOWN_CODES = (-1000, -1006, -1007)       # "execution status unknown"


def error_class(code: int, http_status: int) -> str:
    """retry (with backoff) | outcome_unknown (reconcile by lookup) | rejected (record, no retry) | halt
    (no new entries until an operator resumes). HTTP status decides first where Binance says it does."""
    if http_status == 418 or code in HALT_CODES or http_status == 401:
        return HALT
    if http_status == 429 or code in RETRY_CODES:
        return RETRY
    if code in UNKNOWN_CODES or (http_status >= 500 and code not in ERRORS):
        return UNKNOWN
    return REJECTED


def error_for(code: int, msg: str, http_status: int, endpoint: str, retry_after: float = 0.0) -> BinanceError:
    if http_status == 418:
        return IpBanned(code, msg, http_status, endpoint)
    if http_status == 429 or code == -1003:
        return RateLimited(code, msg, http_status, endpoint, retry_after=retry_after)
    if http_status >= 500 and code not in ERRORS:
        # Binance: a 5XX "is NOT a failure": the execution status is unknown
        return UnknownOutcome(code, msg, http_status, endpoint)
    cls = ERRORS.get(code)
    if cls is None:
        cls = BadRequest if -1200 < code <= -1100 or -5000 < code <= -4000 else BinanceError
    return cls(code, msg, http_status, endpoint)


def sign(secret: str, payload: str) -> str:
    """Binance HMAC-SHA256 signature (hex) of the query string (+ body)."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def fmt(x: float) -> str:
    """A decimal string without exponent or float noise (0.001 not 1e-3, 0.3 not 0.30000000000000004)."""
    d = Decimal(repr(float(x))).normalize()
    s = format(d, "f")
    return s


# --- the signed REST client ------------------------------------------------------------------------
class BinanceClient:
    def __init__(self, base_url: str, api_key: str, api_secret: str, *, recv_window: int = 5000, timeout: float = 10.0,
                 weight_limit: int = 2000, orders_10s: int = 250, orders_1m: int = 1000, max_retry_after: float = 30.0,
                 max_retries: int = 3, backoff_s: float = 0.5,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 pooled: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.pooled = pooled
        self._session: httpx.Client | None = None
        self.__key = api_key
        self.__secret = api_secret
        self.recv_window = recv_window
        self.timeout = timeout
        self.weight_limit, self.orders_10s_limit, self.orders_1m_limit = weight_limit, orders_10s, orders_1m
        self.max_retry_after = max_retry_after
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.clock, self.sleep = clock, sleep
        self.time_offset_ms = 0
        self.last_timestamp_ms = 0      # `timestamp` of the last signed request (bounds when it can still execute)
        self.used_weight_1m = 0
        self.order_count_10s = 0
        self.order_count_1m = 0
        self._seen_at = 0.0
        self.requests = 0
        self.waited_s = 0.0
        self.disconnects = 0            # connections lost / timed out (the broker reconciles after one)

    def __repr__(self) -> str:
        return f"BinanceClient(base_url={self.base_url!r}, recv_window={self.recv_window})"

    def _http(self, method: str, url: str, headers: dict) -> httpx.Response:
        """One pooled keep-alive session (a connection set up once, then reused). pooled=False, the
        benchmark's baseline, keeps no connection alive: a new TCP (+TLS) connection per request, as
        urllib did; the same client otherwise, so only the connection set-up differs."""
        if self._session is None:
            keep = 4 if self.pooled else 0
            self._session = httpx.Client(http2=False, limits=httpx.Limits(max_connections=8, max_keepalive_connections=keep,
                                                                          keepalive_expiry=30.0))
        return self._session.request(method, url, headers=headers, content=b"" if method in ("POST", "PUT") else None,
                                     timeout=self.timeout)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _now_ms(self) -> int:
        return int(self.clock() * 1000) + self.time_offset_ms

    def signed_query(self, params: dict[str, Any]) -> str:
        q = dict(params)
        q["recvWindow"] = self.recv_window
        q["timestamp"] = self.last_timestamp_ms = self._now_ms()
        qs = urllib.parse.urlencode([(k, v) for k, v in q.items() if v is not None])
        return f"{qs}&signature={sign(self.__secret, qs)}"

    def sync_time(self) -> int:
        t0 = self.clock()
        data = self.request("GET", "/fapi/v1/time", signed=False)
        t1 = self.clock()
        self.time_offset_ms = int(data["serverTime"]) - int((t0 + t1) / 2 * 1000)
        log.info("clock resynced with the exchange: offset %d ms", self.time_offset_ms)
        return self.time_offset_ms

    def _throttle(self, is_order: bool, weight: int) -> None:
        now = self.clock()
        # counters reset with their windows (Binance reports them per minute / 10 s)
        if int(now // 60) != int(self._seen_at // 60):
            self.used_weight_1m = 0
            self.order_count_1m = 0
        if int(now // 10) != int(self._seen_at // 10):
            self.order_count_10s = 0
        wait = 0.0
        if self.used_weight_1m + weight > self.weight_limit:
            wait = 60 - now % 60
        if is_order and self.order_count_10s + 1 > self.orders_10s_limit:
            wait = max(wait, 10 - now % 10)
        if is_order and self.order_count_1m + 1 > self.orders_1m_limit:
            wait = max(wait, 60 - now % 60)
        if wait > 0:
            log.warning("rate limit budget reached: waiting %.1f s", wait)
            self.waited_s += wait
            self.sleep(wait)

    def _headers(self, headers) -> None:
        self._seen_at = self.clock()
        for name, attr in (("X-MBX-USED-WEIGHT-1M", "used_weight_1m"), ("X-MBX-ORDER-COUNT-10S", "order_count_10s"),
                           ("X-MBX-ORDER-COUNT-1M", "order_count_1m")):
            v = headers.get(name) if headers is not None else None
            if v is not None:
                try:
                    setattr(self, attr, int(v))
                except ValueError:
                    pass

    def request(self, method: str, path: str, params: dict[str, Any] | None = None, *, signed: bool = True,
                weight: int = 1, is_order: bool = False, keyed: bool = False, _retried: bool = False,
                _attempt: int = 0) -> Any:
        """`keyed`: the API key header without a signature (Binance's USER_STREAM endpoints: listenKey)."""
        self._throttle(is_order, weight)
        if signed:
            qs = self.signed_query(params or {})
        else:
            qs = urllib.parse.urlencode(params or {})
        url = f"{self.base_url}{path}" + (f"?{qs}" if qs else "")
        endpoint = f"{method} {path}"
        log.debug("-> %s %s", endpoint, {k: v for k, v in (params or {}).items()})
        self.requests += 1
        try:
            resp = self._http(method, url, {"X-MBX-APIKEY": self.__key} if signed or keyed else {})
        except httpx.TimeoutException as exc:
            self.disconnects += 1
            if isinstance(exc, httpx.ConnectTimeout):      # never reached the exchange: nothing executed
                err = BinanceError(-1, f"connection failed: {type(exc).__name__}", 0, endpoint)
            else:
                err = UnknownOutcome(-1007, f"no answer within {self.timeout} s ({type(exc).__name__})", 0, endpoint)
        except httpx.ConnectError as exc:                  # refused / unreachable before the request left
            self.disconnects += 1
            err = BinanceError(-1, f"connection failed: {type(exc).__name__}", 0, endpoint)
        except (httpx.TransportError, OSError) as exc:
            # the connection died after the request may have left: the outcome is unknown for an order
            self.disconnects += 1
            err = (UnknownOutcome(-1006, f"connection error: {type(exc).__name__}", 0, endpoint) if is_order
                   else BinanceError(-1, f"connection error: {type(exc).__name__}", 0, endpoint))
        else:
            self._headers(resp.headers)
            if resp.status_code < 400:
                return orjson.loads(resp.content) if resp.content else {}
            try:
                payload = orjson.loads(resp.content or b"{}")
            except orjson.JSONDecodeError:
                payload = {}
            if not isinstance(payload, dict):
                payload = {}
            code, msg = int(payload.get("code", 0) or 0), str(payload.get("msg", resp.reason_phrase))
            retry_after = float(resp.headers.get("Retry-After", 0) or 0)
            err = error_for(code, msg, resp.status_code, endpoint, retry_after)
        log.info("<- %s failed: %s", endpoint, err)
        if isinstance(err, TimestampOutsideRecvWindow) and signed and not _retried:
            self.sync_time()
            return self.request(method, path, params, signed=signed, weight=weight, is_order=is_order, _retried=True,
                                _attempt=_attempt)
        wait = self.retry_wait(err, method, _attempt)
        if wait is not None:
            log.warning("%s: %s; retry %d/%d in %.1f s", endpoint, err.code, _attempt + 1, self.max_retries, wait)
            self.waited_s += wait
            self.sleep(wait)
            return self.request(method, path, params, signed=signed, weight=weight, is_order=is_order, keyed=keyed, _retried=_retried,
                                _attempt=_attempt + 1)
        raise err from None

    def retry_wait(self, err: BinanceError, method: str, attempt: int) -> float | None:
        """Seconds to wait before retrying `err`, or None to give up. Rate limits wait Retry-After (else an
        exponential backoff), up to `max_retries` and never longer than `max_retry_after`; a GET that met a
        5xx or a dead connection is retried the same way (it changes nothing); an order POST never is
        here: its outcome is unknown and only a lookup may decide (BinanceBroker._send)."""
        if attempt >= self.max_retries:
            return None
        backoff = self.backoff_s * (2 ** attempt)
        if isinstance(err, RateLimited):
            wait = err.retry_after if err.retry_after > 0 else backoff
            return wait if wait <= self.max_retry_after else None
        if method == "GET" and (err.http_status >= 500 or err.code == -1):   # not a timeout: that already waited
            return backoff
        return None


# --- the broker -------------------------------------------------------------------------------------
STATUS = {"NEW": "NEW", "PARTIALLY_FILLED": "NEW", "FILLED": "FILLED", "CANCELED": "CANCELED",
          "EXPIRED": "EXPIRED", "EXPIRED_IN_MATCH": "EXPIRED", "REJECTED": "REJECTED"}
REJECTIONS = (InvalidSymbol, InsufficientMargin, OrderRejected, BadRequest, NoSuchOrder, CancelRejected)


class BinanceBroker(Broker):
    name = "binance"
    external_effects = True

    def __init__(self, client: BinanceClient, taker_fee: float = 0.0005, unknown_margin_s: float = 1.0,
                 lookup_interval_s: float = 0.25, guard_restart: bool = True) -> None:
        self.client = client
        self.taker_fee = taker_fee
        self.unknown_margin_s = unknown_margin_s      # beyond timestamp + recvWindow (clock error, queues)
        self.lookup_interval_s = lookup_interval_s
        # A process killed just before this one started may have a request in flight for any id this one
        # re-submits (the service re-processes the uncommitted batch with the same ids); it was signed
        # before now, so it cannot execute after now + recvWindow (+ margin). Until then a "not found"
        # on the pre-send lookup is not proof (local clock, seconds; 0 = no guard: `guard_restart=False`
        # only where no earlier process can have used these ids).
        self.started_at = client.clock()
        self.restart_guard_until = self.started_at + client.recv_window / 1000 + unknown_margin_s if guard_restart else 0.0
        self.resting: dict[str, Order] = {}          # conditional orders live at the exchange
        self.position_watch = PositionWatch()        # ACCOUNT_UPDATE positions vs the executor's
        self.sends = 0                               # POSTs of new orders (tests: never a second one)
        self.reconcile_due = True                    # start-up; again after an unfinished action
        self._disconnects_seen = 0
        # user data stream (executor.user_stream_ws): parsed updates queued by the stream's thread, turned
        # into engine events at the symbol's next bar (on_bar_range, the engine's thread: one fill path)
        self.pushed: collections.deque = collections.deque()
        self.stream_live = False                     # a stream socket is connected: no per-bar algo polling
        self.stream_connects = 0
        self.stream = None                           # the UserDataStream, once start_user_stream() ran

    def __repr__(self) -> str:
        return f"BinanceBroker({self.client!r})"

    @classmethod
    def from_settings(cls, settings, live: bool = False, **client_kw) -> "BinanceBroker":
        if not settings.api_key or not settings.api_secret:
            raise BrokerError("the Binance broker needs BINANCE_API_KEY and BINANCE_API_SECRET in the environment")
        if live:
            if not settings.live_trading:
                raise BrokerError("live trading needs SMC_LIVE_TRADING=1 and the --live flag")
            url = LIVE_URL
        else:
            url = settings.binance_trade_url
            if url.rstrip("/") == LIVE_URL:
                raise BrokerError(f"{LIVE_URL} is the live exchange: pass --live with SMC_LIVE_TRADING=1")
        client_kw = {"timeout": settings.binance_timeout_s, "recv_window": settings.binance_recv_window_ms, **client_kw}
        broker = cls(BinanceClient(url, settings.api_key, settings.api_secret, **client_kw))
        # the user data stream gets its own REST client (its own thread; the engine's counters stay its own)
        key, secret, timeout, window = settings.api_key, settings.api_secret, client_kw["timeout"], client_kw["recv_window"]
        broker._stream_client = lambda: BinanceClient(url, key, secret, timeout=timeout, recv_window=window)
        broker._stream_ws_url = settings.binance_user_ws_url or (LIVE_WS_URL if url.rstrip("/") == LIVE_URL else TESTNET_WS_URL)
        broker._stream_keepalive_s = settings.user_stream_keepalive_s
        return broker

    def start_user_stream(self):
        """Start the user data stream (executor.user_stream_ws) for a broker made by from_settings; returns
        it (None when the broker was built without settings)."""
        make = getattr(self, "_stream_client", None)
        if make is None:
            return None
        from executor.user_stream_ws import UserDataStream
        self.stream = UserDataStream(make(), self, ws_url=self._stream_ws_url, keepalive_s=self._stream_keepalive_s)
        self.stream.start()
        return self.stream

    # --- lookups ------------------------------------------------------------------------------
    def lookup_order(self, symbol: str, cid: str) -> dict | None:
        try:
            return self.client.request("GET", "/fapi/v1/order", {"symbol": symbol, "origClientOrderId": cid})
        except NoSuchOrder:
            return None

    def lookup_algo(self, cid: str) -> dict | None:
        try:
            return self.client.request("GET", "/fapi/v1/algoOrder", {"clientAlgoId": cid})
        except NoSuchOrder:
            return None

    def _events(self, order: Order, data: dict, ts: int) -> list:
        status = STATUS.get(str(data.get("status")), "NEW")
        oid = str(data.get("orderId", ""))
        out: list = []
        qty = float(data.get("executedQty", 0) or 0)
        if status == "FILLED" or qty > 0:
            price = float(data.get("avgPrice", 0) or 0)
            out.append(FillEvent(order.client_order_id, qty, price, price * qty * self.taker_fee, ts))
        out.insert(0, OrderUpdate(order.client_order_id, "FILLED" if status == "FILLED" else status, ts,
                                  exchange_order_id=oid))
        return out

    def _algo_events(self, order: Order, data: dict, ts: int) -> list:
        st = str(data.get("algoStatus", "NEW"))
        aid = str(data.get("algoId", ""))
        if st in ("NEW", "TRIGGERING"):
            return [OrderUpdate(order.client_order_id, "NEW", ts, exchange_order_id=aid)]
        if st in ("CANCELED", "EXPIRED", "REJECTED"):
            return [OrderUpdate(order.client_order_id, st, ts, exchange_order_id=aid)]
        actual = str(data.get("actualOrderId") or "")
        if not actual:
            return []
        filled = self.client.request("GET", "/fapi/v1/order", {"symbol": order.symbol, "orderId": actual})
        if filled.get("status") != "FILLED":
            return []
        evs = self._events(order, filled, ts)
        return [dataclasses_replace(e, trigger=order.leg) if isinstance(e, FillEvent) else e for e in evs]

    # --- Broker interface ---------------------------------------------------------------------
    def submit(self, order: Order, ts: int, timeframe: str = "", position_side: str = "") -> list:
        try:
            if order.type == "MARKET":
                return self._submit_market(order, ts)
            return self._submit_algo(order, ts)
        except REJECTIONS as exc:
            return [OrderUpdate(order.client_order_id, "REJECTED", ts, reason=f"{exc.code} {exc.msg}"[:200])]
        except UnknownOutcome as exc:
            # still unknown after a lookup: reconciliation decides later; the engine keeps it live
            log.error("order %s outcome unknown: %s", order.client_order_id, exc)
            return [OrderUpdate(order.client_order_id, "NEW", ts, reason="unknown_outcome")]
        except BinanceError as exc:
            if exc.error_class == REJECTED:          # e.g. -5000 / HTTP 404: not executed, no retry
                return [OrderUpdate(order.client_order_id, "REJECTED", ts, reason=f"{exc.code} {exc.msg}"[:200])]
            raise                                    # halt-class or retries exhausted: the engine decides

    def _lookup_before_send(self, cid: str, lookup: Callable[[], dict | None]) -> tuple[dict | None, bool]:
        """(the order with this id at the exchange or None when it is not there and cannot arrive any more,
        whether the restart guard was waited out for it)."""
        found = lookup()
        if found is None and self.client.clock() < self.restart_guard_until:
            # a predecessor's request for this id may still execute: wait it out as after an unknown outcome
            log.warning("order %s not found %.1f s after start-up: looked up until a request of the previous "
                        "process can no longer execute", cid, self.client.clock() - self.started_at)
            found, resolved = self._resolve(self._restart_sent_before_ms(), lookup)
            if found is None and not resolved:
                raise UnknownOutcome(-1007, "lookups kept failing in the restart window", 0, "lookup")
            return found, True
        return found, False

    def _submit_market(self, order: Order, ts: int) -> list:
        lookup = lambda: self.lookup_order(order.symbol, order.client_order_id)   # noqa: E731
        found, _ = self._lookup_before_send(order.client_order_id, lookup)
        if found is not None:
            log.warning("order %s already at the exchange (%s): not sent again", order.client_order_id, found.get("status"))
            return self._events(order, found, ts)
        params = {"symbol": order.symbol, "side": order.side, "type": "MARKET", "quantity": fmt(order.qty),
                  "newClientOrderId": order.client_order_id, "newOrderRespType": "RESULT"}
        if order.reduce_only:
            params["reduceOnly"] = "true"
        return self._events(order, self._send("/fapi/v1/order", params, lookup), ts)

    def _restart_sent_before_ms(self) -> int:
        """The latest `timestamp` (exchange clock, as _resolve counts) a predecessor's request can carry:
        this broker's start. Kept in local time and converted now, so a clock resync in between counts."""
        return int(self.started_at * 1000) + self.client.time_offset_ms

    def _submit_algo(self, order: Order, ts: int) -> list:
        found, guarded = self._lookup_before_send(order.client_order_id, lambda: self.lookup_algo(order.client_order_id))
        # A stop the restart guard held back has already been missing for the predecessor's last moments, the
        # restart and the guard: waiting out an unknown outcome as well (recvWindow + margin, then a resend)
        # would outlast the naked-position bound, so its first unknown outcome goes straight to the engine,
        # which flattens (a leftover reduce-only stop cannot open a position)
        wait_unknown = not (guarded and order.leg in STOP_LEGS)
        if found is not None:
            log.warning("algo order %s already at the exchange (%s): not sent again", order.client_order_id, found.get("algoStatus"))
        else:
            params = {"algoType": "CONDITIONAL", "symbol": order.symbol, "side": order.side, "type": order.type,
                      "quantity": fmt(order.qty), "triggerPrice": fmt(order.price), "workingType": "CONTRACT_PRICE",
                      "clientAlgoId": order.client_order_id, "reduceOnly": "true" if order.reduce_only else "false"}
            try:
                found = self._send("/fapi/v1/algoOrder", params, lambda: self.lookup_algo(order.client_order_id),
                                   wait_unknown=wait_unknown)
            except OrderRejected as exc:
                # -4116: an OPEN order already has this clientAlgoId (another request for it landed after our
                # lookup): the stop is there, not rejected; adopt it
                found = self.lookup_algo(order.client_order_id) if exc.code == -4116 else None
                if found is None:
                    raise
                log.warning("algo order %s already open at the exchange (-4116): adopted", order.client_order_id)
        evs = self._algo_events(order, found, ts)
        if any(isinstance(e, OrderUpdate) and e.status == "NEW" for e in evs):
            self.resting[order.client_order_id] = order
        return evs

    def _send(self, path: str, params: dict, lookup: Callable[[], dict | None], wait_unknown: bool = True) -> dict:
        """POST once; after an unknown outcome resolve it by lookup, resend (same id) only once the
        original can no longer execute. Raises UnknownOutcome if it stays unresolvable, or at once when
        `wait_unknown` is False (the caller cannot afford the wait)."""
        cid = params.get("newClientOrderId") or params.get("clientAlgoId")
        for attempt in (1, 2):
            self.sends += 1
            try:
                return self.client.request("POST", path, params, is_order=True)
            except UnknownOutcome as exc:
                if not wait_unknown:
                    log.warning("%s %s: outcome unknown (%s) after the restart guard: not waited out",
                                path, cid, exc.code)
                    raise
                sent_ts = self.client.last_timestamp_ms
                log.warning("%s %s: outcome unknown (%s); looking it up until it can no longer execute",
                            path, cid, exc.code)
                found, resolved = self._resolve(sent_ts, lookup)
                if found is not None:
                    return found
                if not resolved or attempt == 2:
                    raise
                log.warning("%s %s: not executed (timestamp + recvWindow passed): sent again with the same id", path, cid)
        raise AssertionError("unreachable")

    def _resolve(self, sent_ts_ms: int, lookup: Callable[[], dict | None]) -> tuple[dict | None, bool]:
        """(order, True) when found; (None, True) when provably never executed; (None, False) when the
        lookups themselves kept failing past the deadline (still unknown)."""
        deadline_ms = sent_ts_ms + self.client.recv_window + int(self.unknown_margin_s * 1000)
        while True:
            past = self.client._now_ms() >= deadline_ms     # decided BEFORE the lookup: a miss after it is final
            try:
                found = lookup()
            except BinanceError as exc:        # NoSuchOrder is a None from lookup(); anything else: no answer
                log.warning("lookup failed (%s): still unknown", exc.code)
                found, ok = None, False
            else:
                ok = True
            if found is not None:
                return found, True
            if past:
                return None, ok
            self.client.sleep(min(self.lookup_interval_s, max(0.0, (deadline_ms - self.client._now_ms()) / 1000)))

    def cancel(self, order: Order, ts: int) -> list:
        self.resting.pop(order.client_order_id, None)
        try:
            if order.type == "MARKET":
                data = self.client.request("DELETE", "/fapi/v1/order", {"symbol": order.symbol, "origClientOrderId": order.client_order_id})
                return [OrderUpdate(order.client_order_id, STATUS.get(data.get("status"), "CANCELED"), ts)]
            self.client.request("DELETE", "/fapi/v1/algoOrder", {"clientAlgoId": order.client_order_id})
            return [OrderUpdate(order.client_order_id, "CANCELED", ts)]
        except (NoSuchOrder, CancelRejected):
            return []

    # --- user data stream (called from the stream's thread: only flags and a thread-safe queue) --------
    def on_push(self, upd) -> None:
        from executor.user_stream import AccountUpdate
        if isinstance(upd, AccountUpdate):
            # the exchange's position amounts (one-way mode: position side BOTH), watched against the
            # executor's (executor.reconcile.PositionWatch via position_drift); it makes no engine event
            for p in upd.positions:
                if p.position_side == "BOTH":
                    self.position_watch.observe(p.symbol, p.amount, self.client.clock())
        self.pushed.append(upd)

    def position_drift(self, engine) -> list[tuple[str, float, float]]:
        """Symbols whose pushed exchange position has differed from the executor's for the watch's grace:
        a reconciliation is made due (it compares a fresh REST snapshot and adopts, protects, flattens)."""
        if not self.position_watch.pushed:       # the service asks at every poll: nothing pushed, nothing to compare
            return []
        drift = self.position_watch.drifted(held_positions(engine), self.client.clock())
        for symbol, theirs, ours in drift:
            log.warning("%s: the exchange holds %s, the executor %s (ACCOUNT_UPDATE): reconciling", symbol, theirs, ours)
        if drift:
            self.reconcile_due = True
        return drift

    def on_stream_connected(self) -> None:
        """After EVERY (re)connect: events missed while the socket was down are gone, so the state is
        compared with a fresh REST snapshot (the service runs reconcile() when needs_reconcile())."""
        self.stream_connects += 1
        self.stream_live = True
        self.reconcile_due = True

    def on_stream_lost(self) -> None:
        self.stream_live = False                     # blind: back to polling until reconnected + reconciled

    def _drain_pushed(self, symbol: str) -> list:
        from executor.user_stream import broker_events
        legs = {cid: o.leg for cid, o in self.resting.items()}
        keep, out = [], []
        while self.pushed:
            upd = self.pushed.popleft()
            if getattr(upd, "symbol", symbol) != symbol:
                keep.append(upd)
                continue
            evs = broker_events(upd, legs, self.taker_fee)
            for e in evs:
                if isinstance(e, OrderUpdate) and e.status != "NEW":
                    self.resting.pop(e.client_order_id, None)
                    legs.pop(e.client_order_id, None)
            out += evs
        self.pushed.extend(keep)
        return out

    def on_bar_range(self, bar) -> list:
        """Updates pushed by the user data stream for this symbol; while no stream is live, poll the
        resting conditional orders of this symbol (one weight-1 lookup each per bar)."""
        out = self._drain_pushed(bar.symbol)
        if self.stream_live:
            return out
        for cid, order in list(self.resting.items()):
            if order.symbol != bar.symbol:
                continue
            data = self.lookup_algo(cid)
            if data is None:
                continue
            evs = self._algo_events(order, data, bar.close_time)
            if any(isinstance(e, (FillEvent,)) or (isinstance(e, OrderUpdate) and e.status != "NEW") for e in evs):
                self.resting.pop(cid, None)
                out += [e for e in evs if not (isinstance(e, OrderUpdate) and e.status == "NEW")]
        return out

    # --- reconciliation (start-up, after a disconnect): executor.reconcile decides, this executes ------
    def needs_reconcile(self) -> bool:
        """True at start-up, after any lost connection / timeout, and while an action is unfinished."""
        return self.reconcile_due or self.client.disconnects != self._disconnects_seen

    def exchange_snapshot(self) -> ExchangeSnapshot:
        risk = self.client.request("GET", "/fapi/v2/positionRisk", weight=5)
        orders = self.client.request("GET", "/fapi/v1/openOrders", weight=40)
        algos = self.client.request("GET", "/fapi/v1/openAlgoOrders", weight=40)
        return ExchangeSnapshot(
            positions={p["symbol"]: float(p["positionAmt"]) for p in risk if float(p.get("positionAmt") or 0) != 0},
            marks={p["symbol"]: float(p.get("markPrice") or 0) for p in risk},
            open_orders=tuple(orders), open_algos=tuple(algos))

    def reconcile(self, engine, ts: int, wall_ts: int = 0) -> list:
        """Compare the exchange with the engine's state, act (executor.reconcile.plan), write the outcome
        into the engine; returns the records (Orders, Fills, Positions, Alerts incl. `reconciled`).
        A BinanceError from the snapshot propagates (the service halts new entries, never exits)."""
        seen = self.client.disconnects
        snap = self.exchange_snapshot()
        ticks = {s: i.tick_size for s, i in engine.instruments.known.items()}
        rep = plan(snap, holdings(engine), ticks)
        outcomes: dict[int, list] = {}
        self.reconcile_due = False
        for i, a in enumerate(rep.actions):
            outcomes[i] = self._reconcile_action(a, engine, ts)
        records = apply(engine, rep, outcomes, ts, wall_ts)      # sets rep.incomplete
        self.reconcile_due = self.reconcile_due or rep.incomplete
        self._disconnects_seen = seen
        return records

    def _reconcile_action(self, a: Action, engine, ts: int) -> list:
        if a.kind == "adopt" and a.cid in engine.orders and a.algo:
            self.resting[a.cid] = engine.orders[a.cid]
        elif a.kind == "cancel":
            self.resting.pop(a.cid, None)
            try:
                if a.algo:
                    self.client.request("DELETE", "/fapi/v1/algoOrder", {"clientAlgoId": a.cid})
                else:
                    self.client.request("DELETE", "/fapi/v1/order", {"symbol": a.symbol, "origClientOrderId": a.cid})
            except (NoSuchOrder, CancelRejected):
                pass                         # already gone
            except BinanceError as exc:      # reduce-only leftovers cannot open a position: retried next time
                log.warning("reconciliation: cancel of %s failed: %s", a.cid, exc)
                self.reconcile_due = True
        elif a.kind == "protect":
            pos = engine.portfolio.positions[a.position_id]
            stop = Order(client_order_id=client_order_id(pos.signal_id, "stop2"), signal_id=pos.signal_id,
                         symbol=a.symbol, leg="stop2", side=a.side, type="STOP_MARKET", qty=a.qty, price=a.price,
                         reduce_only=True, status="NEW", ts=ts, reason="reconcile")
            evs = self.submit(stop, ts)
            if any(isinstance(e, OrderUpdate) and e.status == "NEW" and e.reason != "unknown_outcome" for e in evs):
                return [(stop, evs)]
            flat = reconcile_order(a.symbol, a.position_id, a.side, a.qty, ts)
            return [(stop, evs), (flat, self.submit(flat, ts))]
        elif a.kind == "flatten":
            flat = reconcile_order(a.symbol, a.position_id or a.symbol, a.side, a.qty, ts)
            return [(flat, self.submit(flat, ts))]
        return []

    def to_dict(self) -> dict:
        return {"resting": sorted(self.resting)}

    def load_dict(self, d: dict) -> None:
        pass   # resting orders are re-read from the engine's live orders in reconcile()

    def close(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.stop()
            self.stream = None
            stream.client.close()
        self.client.close()


def dataclasses_replace(obj, **kw):
    import dataclasses
    return dataclasses.replace(obj, **kw)
