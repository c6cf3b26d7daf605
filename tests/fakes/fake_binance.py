"""A fake Binance USD-M on 127.0.0.1 for tests: REST (exchangeInfo, klines) and combined WS streams.

    with FakeBinance(exchange_info=build_exchange_info(names), start_ms=T0) as fb:
        settings = settings.with_(binance_rest_url=fb.rest_url, binance_ws_url=fb.ws_url)
        fb.publish()                  # the next minute: an open update (x=false) then the closed bar (x=true)
        fb.drop("BTCUSDT", T0)        # this closed bar is never pushed on the WS (REST still has it)
        fb.disconnect_all()           # force-close every WS connection
        fb.inject('{"broken', symbol="BTCUSDT")
        fb.fail_klines(2, status=429, retry_after=1)

Extension: the app is an aiohttp Application built by `make_app()`; other modules add their endpoints
with `fb.add_routes([web.post("/fapi/v1/order", handler), ...])` (before `start()`) or pass
`extensions=[callable(fake) -> list[RouteDef]]`. The server runs in a background thread with its own
event loop on an ephemeral port; `fb.call(fn, *args)` runs fn in that loop and returns its result.

Bars are real: `RecordedBars` serves Binance USD-M perpetual 1m bars (ingest/recorded/perps_1m_2025-05.parquet,
the first 2,000 minutes of each of its 18 symbols) re-stamped on the fake's clock (minute i of a symbol =
row i of the same symbol, cycling; other names borrow a real symbol's rows).
The clock is the test's: `now_ms` only moves when the test publishes or sets it.
"""
from __future__ import annotations

import asyncio
import copy
import functools
import json
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable

import orjson
from aiohttp import WSMsgType, web

REPO = Path(__file__).resolve().parents[2]
BINANCE_DATA = REPO / "tests" / "data" / "binance"
RECORDED_PERPS_1M = REPO / "ingest" / "recorded" / "perps_1m_2025-05.parquet"
BARS_PER_SYMBOL = 2000
STEP = 60_000


def real_symbol_names() -> list[str]:
    return [l.strip() for l in (BINANCE_DATA / "usdt_perp_symbols_2026-06.txt").read_text().split() if l.strip()]


def universe_names(n: int) -> list[str]:
    """The 154 real USDT perpetual names, topped up with generated ones (GEN0001USDT ...) to n."""
    names = real_symbol_names()[:n]
    i = 1
    while len(names) < n:
        names.append(f"GEN{i:04d}USDT")
        i += 1
    return names


def build_exchange_info(names: Iterable[str], extra_symbols: list[dict] | None = None) -> dict:
    """An exchangeInfo with the real structure of http_futures_market_exchange_info.json for `names`.

    Keeps the sample's non-perpetual entry (BTCUSDT_220325) so the universe filter is exercised.
    """
    sample = json.loads((BINANCE_DATA / "http_futures_market_exchange_info.json").read_text())
    template = next(s for s in sample["symbols"] if s["symbol"] == "BTCUSDT")
    others = [s for s in sample["symbols"] if s["contractType"] != "PERPETUAL"]
    out = {k: v for k, v in sample.items() if k != "symbols"}
    syms = []
    for name in names:
        s = copy.deepcopy(template)
        base = name[:-4] if name.endswith("USDT") else name
        s.update(symbol=name, pair=name, baseAsset=base)
        syms.append(s)
    out["symbols"] = syms + others + list(extra_symbols or [])
    return out


@functools.lru_cache(maxsize=4)
def _recorded_rows(path: Path, per_symbol: int) -> dict[str, list[tuple]]:
    import polars as pl
    df = pl.read_parquet(path, columns=["symbol", "open_time", "open", "high", "low", "close", "volume"])
    df = df.sort(["symbol", "open_time"]).group_by("symbol", maintain_order=True).head(per_symbol)
    return {sym: list(part.select(["open", "high", "low", "close", "volume"]).iter_rows())
            for (sym,), part in df.group_by(["symbol"], maintain_order=True)}


class RecordedBars:
    """Deterministic real OHLCV for any (symbol, minute): recorded USD-M perpetual 1m rows, re-stamped."""

    def __init__(self, path: Path = RECORDED_PERPS_1M, origin_ms: int = 0, per_symbol: int = BARS_PER_SYMBOL):
        self.rows: dict[str, list[tuple]] = _recorded_rows(path, per_symbol)
        self.names = sorted(self.rows)
        self.origin_ms = origin_ms

    def bar(self, symbol: str, open_time: int) -> tuple[float, float, float, float, float]:
        rows = self.rows.get(symbol)
        if rows is None:
            rows = self.rows[self.names[zlib.crc32(symbol.encode()) % len(self.names)]]
        i = ((open_time - self.origin_ms) // STEP) % len(rows)
        return rows[i]


def kline_weight(limit: int) -> int:
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


class FakeBinance:
    def __init__(self, exchange_info: dict | None = None, start_ms: int = 1_780_000_020_000 // STEP * STEP,
                 bars: RecordedBars | None = None, weight_limit: int = 2400,
                 extensions: Iterable[Callable[["FakeBinance"], list]] = ()):
        self.exchange_info = exchange_info or build_exchange_info(universe_names(10))
        self.origin_ms = start_ms            # first bar that exists on this exchange
        self.next_open = start_ms            # next bar publish() will close
        self.now_ms = start_ms               # the exchange clock (test-controlled)
        self.bars = bars or RecordedBars(origin_ms=start_ms)
        self.weight_limit = weight_limit
        self.dropped: set[tuple[str, int]] = set()
        self.sent_closed: set[tuple[str, int]] = set()   # closed bars actually pushed on some connection
        self.requests: list[dict] = []
        self.ws_connects = 0
        self.ws_messages_in: list[dict] = []
        self._fail: list[tuple[int, float]] = []
        self._fail_info: list[tuple[int, float | None, bytes | None]] = []
        self._ever_listed: set[str] = set()
        self._weights: list[tuple[float, int]] = []
        self._conns: dict[web.WebSocketResponse, set[str]] = {}
        self._extra_routes: list = []
        self._extensions = list(extensions)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- app -------------------------------------------------------------------------------------
    def add_routes(self, routes: list) -> None:
        if self._runner is not None:
            raise RuntimeError("add routes before start()")
        self._extra_routes.extend(routes)

    def make_app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.get("/fapi/v1/exchangeInfo", self._exchange_info),
            web.get("/fapi/v1/klines", self._klines),
            web.get("/fapi/v1/time", self._time),
            web.get("/market/stream", self._ws),
            web.get("/stream", self._ws),
        ])
        app.add_routes(self._extra_routes)
        for ext in self._extensions:
            app.add_routes(ext(self))
        return app

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/market"

    def start(self) -> "FakeBinance":
        ready = threading.Event()

        def main():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)

            async def boot():
                self._runner = web.AppRunner(self.make_app(), access_log=None)
                await self._runner.setup()
                site = web.TCPSite(self._runner, "127.0.0.1", 0)
                await site.start()
                self.port = site._server.sockets[0].getsockname()[1]
            self._loop.run_until_complete(boot())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="fake-binance", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake Binance did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def down():
            for ws in list(self._conns):
                await ws.close()
            await self._runner.cleanup()
        try:
            self.call(down)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> "FakeBinance":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def call(self, fn, *args, timeout: float = 30.0):
        """Run fn(*args) (sync or coroutine function) in the server's loop; return its result."""
        async def wrapper():
            r = fn(*args)
            if asyncio.iscoroutine(r):
                r = await r
            return r
        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    # ---- REST --------------------------------------------------------------------------------------
    def _used_weight(self) -> int:
        cut = time.monotonic() - 60
        self._weights = [(t, w) for t, w in self._weights if t > cut]
        return sum(w for _, w in self._weights)

    async def _exchange_info(self, request: web.Request) -> web.Response:
        self._weights.append((time.monotonic(), 1))
        self.requests.append({"path": request.path, "params": dict(request.query), "weight": 1,
                              "at": time.monotonic()})
        if self._fail_info:
            status, retry_after, body = self._fail_info.pop(0)
            headers = {"X-MBX-USED-WEIGHT-1M": str(self._used_weight())}
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
            if body is None:
                body = orjson.dumps({"code": -1003, "msg": "Too many requests; IP banned until later."
                                     if status == 418 else "Too many requests."})
            return web.Response(body=body, status=status, content_type="application/json", headers=headers)
        if isinstance(self.exchange_info, bytes):            # a broken payload, served as it is
            return web.Response(body=self.exchange_info, content_type="application/json")
        info = dict(self.exchange_info, serverTime=self.now_ms)
        return web.Response(body=orjson.dumps(info), content_type="application/json",
                            headers={"X-MBX-USED-WEIGHT-1M": str(self._used_weight())})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.now_ms})

    def symbols(self) -> set[str]:
        """Symbols with klines: every symbol any exchangeInfo served so far listed (a broken or partial
        exchangeInfo answer does not make the market's bars go away)."""
        if not isinstance(self.exchange_info, bytes):
            self._ever_listed.update(s["symbol"] for s in self.exchange_info["symbols"])
        return set(self._ever_listed)

    def kline_row(self, symbol: str, open_time: int) -> list:
        o, h, l, c, v = self.bars.bar(symbol, open_time)
        return [open_time, repr(o), repr(h), repr(l), repr(c), repr(v), open_time + STEP - 1, repr(v * c),
                100, repr(v / 2), repr(v * c / 2), "0"]

    async def _klines(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", 500))
            symbol = q["symbol"]
            interval = q["interval"]
        except (KeyError, ValueError):
            return web.json_response({"code": -1102, "msg": "Mandatory parameter missing or malformed."}, status=400)
        if limit < 1 or limit > 1500:
            return web.json_response({"code": -1130, "msg": "Invalid limit."}, status=400)
        weight = kline_weight(limit)
        self.requests.append({"path": request.path, "params": dict(q), "weight": weight, "at": time.monotonic()})
        if self._fail:
            status, retry_after = self._fail.pop(0)
            return web.json_response({"code": -1003, "msg": "Too many requests."}, status=status,
                                     headers={"Retry-After": str(retry_after)})
        self._weights.append((time.monotonic(), weight))
        used = self._used_weight()
        if used > self.weight_limit:
            return web.json_response({"code": -1003, "msg": "Too many requests."}, status=429,
                                     headers={"Retry-After": "1", "X-MBX-USED-WEIGHT-1M": str(used)})
        if interval != "1m":
            return web.json_response({"code": -1120, "msg": "Invalid interval (fake serves 1m)."}, status=400)
        if symbol not in self.symbols():
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        start = int(q.get("startTime", self.origin_ms))
        end = int(q.get("endTime", self.now_ms))
        t = max(start, self.origin_ms)
        t = -(-t // STEP) * STEP
        rows = []
        while t <= end and t <= self.now_ms and len(rows) < limit:   # includes the still-open bar, like Binance
            rows.append(self.kline_row(symbol, t))
            t += STEP
        return web.Response(body=orjson.dumps(rows), content_type="application/json",
                            headers={"X-MBX-USED-WEIGHT-1M": str(used)})

    def fail_exchange_info(self, n: int, status: int = 429, retry_after: float | None = 1,
                           body: bytes | None = None) -> None:
        """The next n exchangeInfo requests answer `status` (429/418 with Retry-After, 5xx, ...)."""
        self.call(lambda: self._fail_info.extend([(status, retry_after, body)] * n))

    def exchange_info_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"] == "/fapi/v1/exchangeInfo"]

    def fail_klines(self, n: int, status: int = 429, retry_after: float = 1) -> None:
        """The next n kline requests answer `status` with Retry-After."""
        self._fail.extend([(status, retry_after)] * n)

    def kline_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"] == "/fapi/v1/klines"]

    # ---- WebSocket -------------------------------------------------------------------------------
    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        streams = {s for s in request.query.get("streams", "").split("/") if s}
        self._conns[ws] = streams
        self.ws_connects += 1
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        cmd = orjson.loads(msg.data)
                    except orjson.JSONDecodeError:
                        continue
                    self.ws_messages_in.append(cmd)
                    method, params = cmd.get("method"), cmd.get("params", [])
                    if method == "SUBSCRIBE":
                        streams.update(params)
                        await ws.send_str(orjson.dumps({"result": None, "id": cmd.get("id")}).decode())
                    elif method == "UNSUBSCRIBE":
                        streams.difference_update(params)
                        await ws.send_str(orjson.dumps({"result": None, "id": cmd.get("id")}).decode())
                    elif method == "LIST_SUBSCRIPTIONS":
                        await ws.send_str(orjson.dumps({"result": sorted(streams), "id": cmd.get("id")}).decode())
        finally:
            self._conns.pop(ws, None)
        return ws

    def connections(self) -> list[set[str]]:
        return self.call(lambda: [set(s) for s in self._conns.values()])

    def event(self, symbol: str, open_time: int, closed: bool, event_time: int | None = None) -> bytes:
        """A kline event in Binance's real payload layout (futures_kline_stream_*.json), combined form."""
        o, h, l, c, v = self.bars.bar(symbol, open_time)
        if not closed:       # a mid-bar update: the bar so far
            h, l, c, v = max(o, (o + c) / 2), min(o, (o + c) / 2), (o + c) / 2, v / 2
        k = {"t": open_time, "T": open_time + STEP - 1, "s": symbol, "i": "1m", "f": 100, "L": 200,
             "o": repr(o), "c": repr(c), "h": repr(h), "l": repr(l), "v": repr(v), "n": 100, "x": closed,
             "q": repr(v * c), "V": repr(v / 2), "Q": repr(v * c / 2), "B": "0"}
        data = {"e": "kline", "E": event_time or (open_time + STEP if closed else open_time + STEP // 2),
                "s": symbol, "k": k}
        return orjson.dumps({"stream": f"{symbol.lower()}@kline_1m", "data": data})

    async def _broadcast(self, open_time: int, updates: int) -> int:
        sent = 0
        for ws, streams in list(self._conns.items()):
            if ws.closed:
                continue
            for stream in sorted(streams):
                sym, _, kind = stream.partition("@")
                if kind != "kline_1m":
                    continue
                sym = sym.upper()
                try:
                    for _ in range(updates):
                        await ws.send_str(self.event(sym, open_time, False).decode())
                    if (sym, open_time) not in self.dropped:
                        await ws.send_str(self.event(sym, open_time, True).decode())
                        self.sent_closed.add((sym, open_time))
                        sent += 1
                except (ConnectionResetError, RuntimeError):
                    break
        return sent

    def publish(self, updates: int = 1) -> int:
        """Close the next minute: push `updates` open updates and the closed bar (unless dropped) to
        every subscribed connection, then move the clock past its close. Returns closed bars sent."""
        ot = self.next_open

        async def go():
            self.now_ms = ot + STEP // 2
            n = await self._broadcast(ot, updates)
            self.now_ms = ot + STEP            # close_time = ot + STEP - 1 < now
            self.next_open = ot + STEP
            return n
        return self.call(go)

    def advance(self, ms: int) -> None:
        """Move the exchange clock forward without publishing (a silent market)."""
        self.call(lambda: setattr(self, "now_ms", self.now_ms + ms))

    def drop(self, symbol: str, open_time: int) -> None:
        self.dropped.add((symbol, open_time))

    def disconnect_all(self) -> int:
        async def go():
            n = 0
            for ws in list(self._conns):
                await ws.close(code=1001, message=b"going away")
                n += 1
            return n
        return self.call(go)

    def inject(self, raw: str | bytes, symbol: str | None = None) -> int:
        """Push raw text to the connections carrying symbol's stream (all connections if None)."""
        text = raw.decode() if isinstance(raw, bytes) else raw

        async def go():
            n = 0
            for ws, streams in list(self._conns.items()):
                if symbol is None or f"{symbol.lower()}@kline_1m" in streams:
                    await ws.send_str(text)
                    n += 1
            return n
        return self.call(go)

    def set_exchange_info(self, info: dict | bytes) -> None:
        self.call(lambda: setattr(self, "exchange_info", info))
