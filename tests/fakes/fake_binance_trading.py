"""A fake Binance USDT-M trading API (aiohttp), for the executor's Binance broker tests.

Self-contained: `FakeBinanceTrading(api_key, api_secret).start()` serves on 127.0.0.1:<random port>
from a background thread and returns the base URL. It checks what the real exchange checks first:
the X-MBX-APIKEY header (-2015), the HMAC-SHA256 signature of the query string + body (-1022) and
the timestamp against recvWindow (-1021, with a settable clock skew), then answers in the layouts of
tests/data/binance (futures_order_response.json, futures_open_algo_orders.json,
futures_position_risk.json, futures_balance.json). MARKET orders fill at once at the symbol's mark.

Faults are queued per endpoint: `fault("POST /fapi/v1/order", kind, **kw)` with kind
  error            answer with Binance error `code` (HTTP `status`), the order is NOT processed
  accept_then_error process the order, then answer error `code` (e.g. -1007: outcome unknown)
  accept_then_hang  process the order, then hold the answer for `seconds` (the client times out)
  rate_limit        HTTP 429 with Retry-After, not processed
  execute_late      the request reaches the matching engine `seconds` late (the client has timed out
                    by then): the exchange checks timestamp + recvWindow on arrival, as Binance does,
                    so it executes late when still inside recvWindow and is refused (-1021) otherwise
The snapshot GETs (positionRisk, openOrders, openAlgoOrders) take `error`, `rate_limit`,
`accept_then_error` and `accept_then_hang` too. Callbacks `on_order_arrival` / `on_order_accepted` let a
test queue a fault for the request arriving, or act (SIGKILL the client) between accepting an order and
answering. Behind the executor's back: `open_behind()` (a
position from another client), `place_algo()` (an orphan or a foreign conditional order).
For 5xx: `error` with status=503/500 is "5xx without execution", `accept_then_error` (default
status 503) "5xx with execution".

User data stream: POST/PUT/DELETE /fapi/v1/listenKey (API key, no signature) and the websocket
/ws/<listenKey>, which pushes ORDER_TRADE_UPDATE on every fill / cancel, ACCOUNT_UPDATE on every position
change and ALGO_UPDATE on every conditional order placed, cancelled or triggered (TRIGGERED then
FINISHED), in the layouts of tests/data/binance/futures_*_update*.json. Events while no socket is
connected are lost, as on Binance. Faults: `drop_stream()` (close every socket, the key stays valid),
`expire_listen_key()` (push listenKeyExpired, close, the key is gone), `refuse_keepalive(n)` (the next n
PUTs answer -1125 "This listenKey does not exist.").
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

import orjson
from aiohttp import web

DATA = Path(__file__).resolve().parents[1] / "data" / "binance"


def _filters(exchange_info: dict) -> dict[str, dict]:
    out = {}
    for s in exchange_info["symbols"]:
        f = {x["filterType"]: x for x in s["filters"]}
        out[s["symbol"]] = {"tick": float(f["PRICE_FILTER"]["tickSize"]), "step": float(f["MARKET_LOT_SIZE"]["stepSize"]),
                            "min_notional": float(f.get("MIN_NOTIONAL", {}).get("notional", 0))}
    return out


class FakeBinanceTrading:
    def __init__(self, api_key: str, api_secret: str, marks: dict[str, float] | None = None,
                 balance: float = 10_000.0, leverage: int = 20) -> None:
        self.api_key, self.api_secret = api_key, api_secret
        info = orjson.loads((DATA / "http_futures_market_exchange_info.json").read_bytes())
        self.symbols = _filters(info)
        self.marks = dict(marks or {"BTCUSDT": 50_000.0, "ETHUSDT": 2_000.0})
        self.balance, self.leverage = balance, leverage
        self.clock_skew_ms = 0                       # the exchange's clock minus ours
        self.orders: dict[int, dict] = {}
        self.algos: dict[int, dict] = {}
        self.positions: dict[str, float] = defaultdict(float)
        self.entry_price: dict[str, float] = {}
        self.requests: list[tuple[str, str, dict]] = []   # (method, path, params without signature)
        self.signatures: list[str] = []                    # every signature received (secret-leak scans)
        self.faults: dict[str, deque] = defaultdict(deque)
        self.late_executions: list[str] = []               # endpoints whose request was held in transit
        self.weight_used = 0
        self._windows: dict[str, tuple] = {}                # window -> (index, total when it began)
        self._window_totals: dict[str, int] = {}            # totals at the last answer
        self.naked_since: dict[str, float] = {}            # symbol -> monotonic time it became uncovered
        self.naked_max_s = 0.0
        self.naked_spells: list[dict] = []                 # closed spells: symbol, length s, end (exchange ms)
        self.last_usage: dict[str, str] = {}                # the usage headers of the last answer
        self.peers: set = set()                             # client (host, port) pairs: one per TCP connection
        self.order_count = 0
        # callbacks (the event loop's thread) for tests that act at a precise moment of an order: `on_order_arrival`
        # (endpoint) as a new-order POST arrives, before anything else (it may queue a fault for it);
        # `on_order_accepted`(endpoint, order) once the order was executed / placed, before the answer
        self.on_order_arrival = None
        self.on_order_accepted = None
        self._ids = itertools.count(8_886_774)
        self._algo_ids = itertools.count(2_148_719)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self.base_url = ""
        self.listen_keys: set[str] = set()
        self._key_ids = itertools.count(1)
        self.streams: list = []                              # (listenKey, ws, queue) of connected sockets
        self.stream_connects = 0
        self.pushed: list[dict] = []                         # every event pushed to at least one socket
        self.lost: list[dict] = []                           # events that found no socket
        self.keepalives = 0
        self._refuse_keepalive = 0
        self._stream_down_until = 0.0

    # --- test controls ------------------------------------------------------------------------
    def fault(self, endpoint: str, kind: str, **kw) -> None:
        self.faults[endpoint].append({"kind": kind, **kw})

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_skew_ms

    def orders_with_client_id(self, cid: str) -> list[dict]:
        return [o for o in self.orders.values() if o["clientOrderId"] == cid]

    def open_behind(self, symbol: str, qty: float, cid: str = "web_manual_1") -> dict:
        """A position opened behind the executor's back (another client, the web UI): a filled MARKET
        order with someone else's client id. Signed qty: > 0 long."""
        return self._fill_market(symbol, "BUY" if qty > 0 else "SELL", abs(qty), cid, False)

    def place_algo(self, symbol: str, cid: str, side: str, qty: float, trigger: float, typ: str = "STOP_MARKET",
                   reduce_only: bool = True) -> dict:
        """A conditional order placed directly (an orphan left by a dead executor, a foreign order)."""
        now = self.now_ms()
        aid = next(self._algo_ids)
        a = {"algoId": aid, "clientAlgoId": cid, "algoType": "CONDITIONAL", "type": typ, "orderType": typ,
             "symbol": symbol, "side": side, "positionSide": "BOTH", "timeInForce": "GTC", "quantity": f"{qty}",
             "algoStatus": "NEW", "actualOrderId": "", "actualPrice": "0.00000", "triggerPrice": f"{trigger}",
             "price": "0.000", "workingType": "CONTRACT_PRICE", "priceMatch": "NONE", "closePosition": False,
             "priceProtect": False, "reduceOnly": reduce_only, "createTime": now, "updateTime": now,
             "triggerTime": 0, "goodTillDate": 0}
        self.algos[aid] = a
        self.protection_check(symbol)
        return a

    def protection_check(self, symbol: str) -> None:
        """Naked-position accounting (the chaos test's bound): called after every change of a position or
        of a conditional order; a position is covered when NEW reduce-only STOP_MARKET orders on its
        closing side add up to its size. `naked_max_s` is the longest uncovered spell so far."""
        pos = self.positions.get(symbol, 0.0)
        close_side = "SELL" if pos > 0 else "BUY"
        cover = sum(float(a["quantity"]) for a in self.algos.values()
                    if a["symbol"] == symbol and a["algoStatus"] == "NEW" and a["type"] == "STOP_MARKET"
                    and a["reduceOnly"] and a["side"] == close_side)
        now = time.monotonic()
        naked = pos != 0 and cover + 1e-12 < abs(pos)
        since = self.naked_since.get(symbol)
        if naked and since is None:
            self.naked_since[symbol] = now
        elif not naked and since is not None:
            self.naked_max_s = max(self.naked_max_s, now - since)
            self.naked_spells.append({"symbol": symbol, "s": round(now - since, 3),
                                      "end_ms": self.now_ms()})
            del self.naked_since[symbol]

    def naked_now_s(self) -> float:
        now = time.monotonic()
        return max([self.naked_max_s] + [now - t for t in self.naked_since.values()])

    def open_algos(self, symbol: str | None = None) -> list[dict]:
        return [a for a in self.algos.values() if a["algoStatus"] == "NEW" and symbol in (None, a["symbol"])]

    def trigger(self, symbol: str, price: float) -> list[dict]:
        """Move the mark and fire the conditional orders it crosses (filled at `price`)."""
        self.marks[symbol] = price
        fired = []
        for a in self.algos.values():
            if a["symbol"] != symbol or a["algoStatus"] != "NEW":
                continue
            trig = float(a["triggerPrice"])
            long_exit = a["side"] == "SELL"
            hit = (price <= trig if long_exit else price >= trig) if a["type"] == "STOP_MARKET" else \
                  (price >= trig if long_exit else price <= trig)
            if hit:
                o = self._fill_market(symbol, a["side"], float(a["quantity"]), f"algo{a['algoId']}", True)
                a.update(algoStatus="TRIGGERED", actualOrderId=str(o["orderId"]), actualPrice=o["avgPrice"],
                         triggerTime=self.now_ms())
                self._push_algo(a)
                a.update(algoStatus="FINISHED")
                self._push_algo(a, o["avgPrice"], o["executedQty"])
                fired.append(a)
        self.protection_check(symbol)
        return fired

    # --- server lifecycle ---------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/fapi/v1/time", self._time)
        r.add_post("/fapi/v1/order", self._new_order)
        r.add_get("/fapi/v1/order", self._get_order)
        r.add_delete("/fapi/v1/order", self._cancel_order)
        r.add_post("/fapi/v1/algoOrder", self._new_algo)
        r.add_get("/fapi/v1/algoOrder", self._get_algo)
        r.add_delete("/fapi/v1/algoOrder", self._cancel_algo)
        r.add_get("/fapi/v1/openOrders", self._open_orders)
        r.add_get("/fapi/v1/openAlgoOrders", self._open_algos)
        r.add_get("/fapi/v2/positionRisk", self._position_risk)
        r.add_get("/fapi/v2/balance", self._balance)
        r.add_post("/fapi/v1/listenKey", self._listen_key_new)
        r.add_put("/fapi/v1/listenKey", self._listen_key_keepalive)
        r.add_delete("/fapi/v1/listenKey", self._listen_key_close)
        r.add_get("/ws/{key}", self._ws)
        return app

    # --- user data stream ---------------------------------------------------------------------
    def _template(self, name: str) -> dict:
        return orjson.loads((DATA / name).read_bytes())

    def push(self, event: dict) -> None:
        """Send one event to every connected socket (from any thread); lost when none is connected."""
        def send():
            if not self.streams:
                self.lost.append(event)
                return
            self.pushed.append(event)
            for _key, _ws, q in self.streams:
                q.put_nowait(event)
        if self._loop is None:
            return
        try:
            running = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            running = False
        if running:
            send()
        else:
            self._loop.call_soon_threadsafe(send)

    def _push_order(self, o: dict, execution: str) -> None:
        ev = self._template("futures_order_update_trade.json")
        now = self.now_ms()
        filled = o["status"] == "FILLED"
        ev.update(E=now, T=now)
        ev["o"].update(s=o["symbol"], c=o["clientOrderId"], S=o["side"], o=o["type"], ot=o["origType"], q=o["origQty"],
                       p="0", ap=o["avgPrice"], sp="0", x=execution, X=o["status"], i=o["orderId"],
                       l=o["executedQty"] if filled else "0", z=o["executedQty"], L=o["avgPrice"] if filled else "0",
                       n=f"{float(o['cumQuote']) * 0.0005:.8f}" if filled else "0", T=now, m=False,
                       R=bool(o["reduceOnly"]), ps="BOTH", rp="0")
        self.push(ev)

    def _push_account(self, symbol: str) -> None:
        ev = self._template("futures_account_update.json")
        now = self.now_ms()
        ev.update(E=now, T=now)
        ev["a"]["B"] = [dict(ev["a"]["B"][0], a="USDT", wb=f"{self.balance}", cw=f"{self.balance}", bc="0")]
        amt = self.positions.get(symbol, 0.0)
        ev["a"]["P"] = [dict(ev["a"]["P"][0], s=symbol, pa=f"{amt}", ep=f"{self.entry_price.get(symbol, 0.0) if amt else 0.0}",
                             ps="BOTH", mt="cross")]
        self.push(ev)

    def _push_algo(self, a: dict, avg: str = "0.00000", qty: str = "0.00000") -> None:
        ev = self._template("futures_algo_update_new.json")
        now = self.now_ms()
        ev.update(E=now, T=now)
        ev["o"].update(caid=a["clientAlgoId"], aid=a["algoId"], o=a["type"], s=a["symbol"], S=a["side"], q=a["quantity"],
                       X=a["algoStatus"], ai=a["actualOrderId"], ap=avg, aq=qty, tp=a["triggerPrice"], p="0",
                       R=bool(a["reduceOnly"]), tt=a["triggerTime"], rm="")
        self.push(ev)

    def drop_stream(self, down_s: float = 0.0) -> None:
        """Close every user-stream socket (a network drop); the listenKey stays valid. New connections are
        refused (HTTP 503) for `down_s` seconds: what happens meanwhile is pushed to nobody (lost)."""
        self._stream_down_until = time.monotonic() + down_s
        self._loop.call_soon_threadsafe(lambda: [q.put_nowait(None) for _k, _w, q in self.streams])

    def expire_listen_key(self) -> None:
        """The listenKey expires: `listenKeyExpired` is pushed, the sockets close, the key is refused."""
        def expire():
            for key, _w, q in self.streams:
                q.put_nowait({"e": "listenKeyExpired", "E": self.now_ms(), "listenKey": key})
                q.put_nowait(None)
            self.listen_keys.clear()
        self._loop.call_soon_threadsafe(expire)

    def refuse_keepalive(self, n: int = 1) -> None:
        self._refuse_keepalive += n

    def _key_ok(self, request) -> bool:
        return request.headers.get("X-MBX-APIKEY") == self.api_key

    async def _listen_key_new(self, request):
        if not self._key_ok(request):
            return self._err(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        # Binance: "If the account has an active listenKey, that listenKey will be returned"
        if not self.listen_keys:
            self.listen_keys.add(f"lk{next(self._key_ids):04d}" + "x" * 56)
        return self._json({"listenKey": next(iter(self.listen_keys))})

    async def _listen_key_keepalive(self, request):
        if not self._key_ok(request):
            return self._err(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        self.keepalives += 1
        if self._refuse_keepalive > 0 or not self.listen_keys:
            self._refuse_keepalive = max(0, self._refuse_keepalive - 1)
            return self._err(-1125, "This listenKey does not exist.")
        return self._json({"listenKey": next(iter(self.listen_keys))})

    async def _listen_key_close(self, request):
        if not self._key_ok(request):
            return self._err(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        self.listen_keys.clear()
        return self._json({})

    async def _ws(self, request):
        key = request.match_info["key"]
        if time.monotonic() < self._stream_down_until:
            return web.Response(status=503, text="unavailable")
        if key not in self.listen_keys:
            return self._err(-1125, "This listenKey does not exist.")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        q: asyncio.Queue = asyncio.Queue()
        entry = (key, ws, q)
        self.streams.append(entry)
        self.stream_connects += 1

        async def reader():
            async for _msg in ws:
                pass
            q.put_nowait(None)
        rt = asyncio.ensure_future(reader())
        try:
            while True:
                ev = await q.get()
                if ev is None:
                    break
                await ws.send_str(orjson.dumps(ev).decode())
        finally:
            if entry in self.streams:
                self.streams.remove(entry)
            rt.cancel()
            await ws.close()
        return ws

    def start(self) -> str:
        ready = threading.Event()

        def serve():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(self.app(), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]
            self.base_url = f"http://127.0.0.1:{port}"
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="fake-binance-trading", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.base_url

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # --- plumbing -------------------------------------------------------------------------------
    def _json(self, data, status: int = 200, headers: dict | None = None) -> web.Response:
        h = self.last_usage = self.usage_headers()
        h.update(headers or {})
        return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=h)

    def usage_headers(self) -> dict[str, str]:
        """Used weight / order count in the current fixed window (minute, 10 s), as Binance reports them:
        the totals minus their values when the window began."""
        now = time.time()
        for key, span, total in (("w1m", 60, self.weight_used), ("o10s", 10, self.order_count), ("o1m", 60, self.order_count)):
            win = int(now // span)
            if self._windows.get(key, (None, 0))[0] != win:
                self._windows[key] = (win, self._window_totals.get(key, 0))
            self._window_totals[key] = total
        used = lambda key, total: total - self._windows[key][1]   # noqa: E731
        return {"X-MBX-USED-WEIGHT-1M": str(used("w1m", self.weight_used)),
                "X-MBX-ORDER-COUNT-10S": str(used("o10s", self.order_count)),
                "X-MBX-ORDER-COUNT-1M": str(used("o1m", self.order_count))}

    def _err(self, code: int, msg: str, status: int = 400, headers: dict | None = None) -> web.Response:
        return self._json({"code": code, "msg": msg}, status, headers)

    async def _auth(self, request: web.Request, weight: int = 1):
        """(params, None) when the request is authentic, else (None, error response)."""
        self.weight_used += weight
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername"))
        body = (await request.read()).decode()
        qs = request.query_string
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            return None, self._err(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        full = qs + body
        if "&signature=" not in full:
            return None, self._err(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
        payload, _, sig = full.rpartition("&signature=")
        self.signatures.append(sig)
        good = hmac.new(self.api_secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(good, sig):
            return None, self._err(-1022, "Signature for this request is not valid.")
        params = dict(request.query)
        params.pop("signature", None)
        ts, window = int(params.get("timestamp", 0)), int(params.get("recvWindow", 5000))
        now = self.now_ms()
        if ts > now + 1000 or now - ts > window:
            return None, self._err(-1021, "Timestamp for this request is outside of the recvWindow.")
        self.requests.append((request.method, request.path, params))
        return params, None

    async def _fault(self, endpoint: str, phase: str):
        q = self.faults.get(endpoint)
        if not q:
            return None
        f = q[0]
        if phase == "before" and f["kind"] in ("error", "rate_limit"):
            q.popleft()
            if f["kind"] == "rate_limit":
                return self._err(-1003, "Too many requests; please use the websocket for live updates.", 429,
                                 {"Retry-After": str(f.get("retry_after", 1))})
            return self._err(f["code"], f.get("msg", "injected"), f.get("status", 400))
        if phase == "after" and f["kind"] in ("accept_then_error", "accept_then_hang"):
            q.popleft()
            if f["kind"] == "accept_then_hang":
                await asyncio.sleep(f.get("seconds", 5))
                return None
            return self._err(f["code"], f.get("msg", "Timeout waiting for response from backend server. "
                                                       "Send status unknown; execution status unknown."), f.get("status", 503))
        return None

    # --- endpoints ------------------------------------------------------------------------------
    async def _time(self, request):
        return self._json({"serverTime": self.now_ms()})

    def _check_symbol_qty(self, symbol: str, qty: float, reduce_only: bool, side: str):
        if symbol not in self.symbols:
            return self._err(-1121, "Invalid symbol.")
        spec = self.symbols[symbol]
        steps = qty / spec["step"]
        if qty <= 0 or abs(steps - round(steps)) > 1e-9:
            return self._err(-1111, "Precision is over the maximum defined for this asset.")
        mark = self.marks.get(symbol, 0.0)
        pos = self.positions[symbol]
        if reduce_only:
            if pos == 0 or (pos > 0) == (side == "BUY"):
                return self._err(-2022, "ReduceOnly Order is rejected.")
            return None
        if qty * mark < spec["min_notional"]:
            return self._err(-4164, f"Order's notional must be no smaller than {spec['min_notional']} (unless you choose reduce only).")
        used = sum(abs(q) * self.marks.get(s, 0) for s, q in self.positions.items()) / self.leverage
        if used + qty * mark / self.leverage > self.balance:
            return self._err(-2019, "Margin is insufficient.")
        return None

    def _fill_market(self, symbol: str, side: str, qty: float, cid: str, reduce_only: bool) -> dict:
        price = self.marks[symbol]
        signed = qty if side == "BUY" else -qty
        self.positions[symbol] = round(self.positions[symbol] + signed, 10)
        if self.positions[symbol] != 0:
            self.entry_price[symbol] = price
        now = self.now_ms()
        oid = next(self._ids)
        o = {"orderId": oid, "symbol": symbol, "status": "FILLED", "clientOrderId": cid, "price": "0.00",
             "avgPrice": f"{price}", "origQty": f"{qty}", "executedQty": f"{qty}", "cumQuote": f"{price * qty}",
             "timeInForce": "GTC", "type": "MARKET", "reduceOnly": reduce_only, "closePosition": False, "side": side,
             "positionSide": "BOTH", "stopPrice": "0.00", "workingType": "CONTRACT_PRICE", "priceProtect": False,
             "origType": "MARKET", "priceMatch": "NONE", "selfTradePreventionMode": "NONE", "goodTillDate": 0,
             "time": now, "updateTime": now}
        self.orders[oid] = o
        self.protection_check(symbol)
        self._push_order(o, "TRADE")
        self._push_account(symbol)
        return o

    async def _in_transit(self, endpoint: str) -> None:
        q = self.faults.get(endpoint)
        if q and q[0]["kind"] == "execute_late":
            f = q.popleft()
            self.late_executions.append(endpoint)
            await asyncio.sleep(f.get("seconds", 1.5))

    async def _new_order(self, request):
        if self.on_order_arrival is not None:
            self.on_order_arrival("POST /fapi/v1/order")
        await self._in_transit("POST /fapi/v1/order")
        params, err = await self._auth(request, 0)
        if err:
            return err
        bad = await self._fault("POST /fapi/v1/order", "before")
        if bad:
            return bad
        self.order_count += 1
        symbol, side, typ = params.get("symbol", ""), params.get("side", ""), params.get("type", "")
        cid = params.get("newClientOrderId", "")
        if typ != "MARKET":
            return self._err(-1116, "Invalid orderType.")
        if any(o["clientOrderId"] == cid and o["status"] == "NEW" for o in self.orders.values()):
            return self._err(-4116, "ClientOrderId is duplicated.")
        reduce_only = params.get("reduceOnly") == "true"
        qty = float(params.get("quantity", 0))
        rej = self._check_symbol_qty(symbol, qty, reduce_only, side)
        if rej:
            return rej
        o = self._fill_market(symbol, side, qty, cid, reduce_only)
        if self.on_order_accepted is not None:
            self.on_order_accepted("POST /fapi/v1/order", o)
        late = await self._fault("POST /fapi/v1/order", "after")
        if late:
            return late
        return self._json(o)

    async def _get_order(self, request):
        params, err = await self._auth(request)
        if err:
            return err
        if params.get("symbol") not in self.symbols:
            return self._err(-1121, "Invalid symbol.")
        for o in self.orders.values():
            if (params.get("origClientOrderId") and o["clientOrderId"] == params["origClientOrderId"]) or \
               (params.get("orderId") and str(o["orderId"]) == params["orderId"]):
                return self._json(o)
        return self._err(-2013, "Order does not exist.")

    async def _cancel_order(self, request):
        params, err = await self._auth(request)
        if err:
            return err
        for o in self.orders.values():
            if o["clientOrderId"] == params.get("origClientOrderId"):
                if o["status"] != "NEW":
                    return self._err(-2011, "Unknown order sent.")
                o["status"] = "CANCELED"
                self._push_order(o, "CANCELED")
                return self._json(o)
        return self._err(-2011, "Unknown order sent.")

    async def _new_algo(self, request):
        if self.on_order_arrival is not None:
            self.on_order_arrival("POST /fapi/v1/algoOrder")
        await self._in_transit("POST /fapi/v1/algoOrder")
        params, err = await self._auth(request, 0)
        if err:
            return err
        bad = await self._fault("POST /fapi/v1/algoOrder", "before")
        if bad:
            return bad
        self.order_count += 1
        if params.get("algoType") != "CONDITIONAL":
            return self._err(-1116, "Invalid algoType.")
        if params.get("type") not in ("STOP_MARKET", "TAKE_PROFIT_MARKET"):
            return self._err(-1116, "Invalid orderType.")
        symbol = params.get("symbol", "")
        if symbol not in self.symbols:
            return self._err(-1121, "Invalid symbol.")
        cid = params.get("clientAlgoId", "")
        if any(a["clientAlgoId"] == cid and a["algoStatus"] == "NEW" for a in self.algos.values()):
            return self._err(-4116, "ClientOrderId is duplicated.")
        now = self.now_ms()
        aid = next(self._algo_ids)
        a = {"algoId": aid, "clientAlgoId": cid, "algoType": "CONDITIONAL", "type": params["type"],
             "orderType": params["type"], "symbol": symbol, "side": params.get("side"), "positionSide": "BOTH",
             "timeInForce": "GTC", "quantity": params.get("quantity"), "algoStatus": "NEW", "actualOrderId": "",
             "actualPrice": "0.00000", "triggerPrice": params.get("triggerPrice"), "price": "0.000",
             "workingType": params.get("workingType", "CONTRACT_PRICE"), "priceMatch": "NONE",
             "closePosition": params.get("closePosition") == "true", "priceProtect": False,
             "reduceOnly": params.get("reduceOnly") == "true", "createTime": now, "updateTime": now,
             "triggerTime": 0, "goodTillDate": 0}
        self.algos[aid] = a
        self.protection_check(symbol)
        self._push_algo(a)
        if self.on_order_accepted is not None:
            self.on_order_accepted("POST /fapi/v1/algoOrder", a)
        late = await self._fault("POST /fapi/v1/algoOrder", "after")
        if late:
            return late
        return self._json(a)

    async def _get_algo(self, request):
        params, err = await self._auth(request)
        if err:
            return err
        for a in self.algos.values():
            if a["clientAlgoId"] == params.get("clientAlgoId") or str(a["algoId"]) == params.get("algoId"):
                return self._json(a)
        return self._err(-2013, "Order does not exist.")

    async def _cancel_algo(self, request):
        params, err = await self._auth(request)
        if err:
            return err
        for a in self.algos.values():
            if a["clientAlgoId"] == params.get("clientAlgoId") and a["algoStatus"] == "NEW":
                a["algoStatus"] = "CANCELED"
                self.protection_check(a["symbol"])
                self._push_algo(a)
                return self._json({"algoId": a["algoId"], "clientAlgoId": a["clientAlgoId"], "code": "200", "msg": "success"})
        return self._err(-2011, "Unknown order sent.")

    async def _open_orders(self, request):
        params, err = await self._auth(request)
        if err:
            return err
        bad = await self._fault("GET /fapi/v1/openOrders", "before") or await self._fault("GET /fapi/v1/openOrders", "after")
        if bad:
            return bad
        return self._json([o for o in self.orders.values() if o["status"] == "NEW"])

    async def _open_algos(self, request):
        params, err = await self._auth(request)
        if err:
            return err
        bad = await self._fault("GET /fapi/v1/openAlgoOrders", "before") or await self._fault("GET /fapi/v1/openAlgoOrders", "after")
        if bad:
            return bad
        return self._json([a for a in self.algos.values() if a["algoStatus"] == "NEW"])

    async def _position_risk(self, request):
        params, err = await self._auth(request, 5)
        if err:
            return err
        bad = await self._fault("GET /fapi/v2/positionRisk", "before") or await self._fault("GET /fapi/v2/positionRisk", "after")
        if bad:
            return bad
        template = orjson.loads((DATA / "futures_position_risk.json").read_bytes())[0]
        out = []
        for sym, amt in self.positions.items():
            if amt == 0:
                continue
            mark = self.marks[sym]
            out.append({**template, "symbol": sym, "positionAmt": f"{amt}", "entryPrice": f"{self.entry_price[sym]}",
                        "markPrice": f"{mark}", "unRealizedProfit": f"{(mark - self.entry_price[sym]) * amt}",
                        "notional": f"{mark * amt}", "leverage": str(self.leverage), "updateTime": self.now_ms()})
        return self._json(out)

    async def _balance(self, request):
        params, err = await self._auth(request, 5)
        if err:
            return err
        template = orjson.loads((DATA / "futures_balance.json").read_bytes())[0]
        return self._json([{**template, "balance": f"{self.balance}", "availableBalance": f"{self.balance}",
                            "updateTime": self.now_ms()}])
