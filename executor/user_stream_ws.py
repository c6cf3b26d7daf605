"""The user data stream adapter: listenKey lifecycle + websocket, feeding executor.user_stream's parser.

Rules, from Binance's USDS-M docs ("User Data Streams"):
* POST /fapi/v1/listenKey "Start a new user data stream. The stream will close after 60 minutes unless a
  keepalive is sent. If the account has an active listenKey, that listenKey will be returned and its
  validity will be extended for 60 minutes." PUT keeps it alive; both need only the X-MBX-APIKEY header.
  We keep it alive every `keepalive_s` (30 min by default: half the validity).
* "A single connection ... is only valid for 24 hours; expect to be disconnected at the 24 hour mark":
  a close is normal, so every close reconnects (with backoff on repeated failures).
* `listenKeyExpired` is pushed when the key expired, and a keepalive of a dead key answers -1125 ("This
  listenKey does not exist."): both get a new key.
* Events are not replayed: after EVERY (re)connect the broker is told (`on_stream_connected`), which
  makes a REST reconciliation due (executor.reconcile plan/apply with a fresh exchange snapshot).

Threading: the stream runs its own asyncio loop in a daemon thread; it only hands parsed updates to the
broker's thread-safe queue and sets flags; the engine applies them on its own thread (on_bar_range).
"""
from __future__ import annotations

import asyncio
import logging
import threading

import orjson
import websockets

from executor.brokers.binance import LIVE_WS_URL, TESTNET_WS_URL, BinanceError  # noqa: F401
from executor.user_stream import ListenKeyExpired, MalformedEvent, ParseStats, parse_event

log = logging.getLogger("smc.executor.user_stream")

KEY_GONE = -1125                                        # "This listenKey does not exist."


class UserDataStream:
    def __init__(self, client, sink, ws_url: str = TESTNET_WS_URL, keepalive_s: float = 30 * 60,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0, ping_interval_s: float = 15.0) -> None:
        """`client`: a BinanceClient (its own: the stream's thread must not share the engine's counters);
        `sink`: on_push(update), on_stream_connected(), on_stream_lost() (the BinanceBroker)."""
        self.client, self.sink = client, sink
        self.ws_url = ws_url.rstrip("/")
        self.keepalive_s, self.backoff_s, self.max_backoff_s = keepalive_s, backoff_s, max_backoff_s
        self.ping_interval_s = ping_interval_s
        self.stats = ParseStats()
        self.listen_key = ""
        self.keys_created = 0
        self.connects = 0
        self.expired = 0
        self.keepalive_refused = 0
        self.malformed = 0
        self.events = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws = None
        self._task: asyncio.Task | None = None

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="user-data-stream", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        async def main():
            self._task = asyncio.current_task()
            try:
                await self._run()
            except asyncio.CancelledError:
                pass
        asyncio.run(main())

    def stop(self, timeout: float = 10.0) -> None:
        """Ends the thread whatever it is doing (connecting, reading, backing off): its task is cancelled."""
        self._stop.set()
        if self._loop is not None and self._task is not None:
            try:
                self._loop.call_soon_threadsafe(self._task.cancel)
            except RuntimeError:             # the loop has already finished
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    # --- listenKey (REST, in a worker thread: the client is synchronous) --------------------------------
    async def _new_key(self) -> str:
        data = await asyncio.to_thread(self.client.request, "POST", "/fapi/v1/listenKey", signed=False, keyed=True)
        self.keys_created += 1
        return str(data["listenKey"])

    async def _keepalive(self, ws) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            try:
                await asyncio.to_thread(self.client.request, "PUT", "/fapi/v1/listenKey", signed=False, keyed=True)
            except BinanceError as exc:
                if exc.code == KEY_GONE:
                    log.warning("listenKey keepalive refused (-1125): a new key and a new connection")
                    self.keepalive_refused += 1
                    self.listen_key = ""
                    await ws.close()
                    return
                log.warning("listenKey keepalive failed: %s (retried at the next interval)", exc)

    # --- the connection loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._stop.is_set():
            return
        failures = 0
        while not self._stop.is_set():
            try:
                if not self.listen_key:
                    self.listen_key = await self._new_key()
                # a half-open TCP connection shows no close: pings find it within ping_interval + ping_timeout
                async with websockets.connect(f"{self.ws_url}/ws/{self.listen_key}", open_timeout=10,
                                              ping_interval=self.ping_interval_s, ping_timeout=self.ping_interval_s) as ws:
                    self._ws = ws
                    self.connects += 1
                    failures = 0
                    self.sink.on_stream_connected()
                    ka = asyncio.ensure_future(self._keepalive(ws))
                    try:
                        await self._read(ws)
                    finally:
                        ka.cancel()
            except (OSError, websockets.WebSocketException, BinanceError, asyncio.TimeoutError) as exc:
                failures += 1
                if isinstance(exc, websockets.InvalidStatus):
                    self.listen_key = ""                   # the key was refused: a new one next time
                log.warning("user data stream: %s: %s", type(exc).__name__, exc)
            finally:
                self._ws = None
                self.sink.on_stream_lost()
            if self._stop.is_set():
                break
            delay = min(self.max_backoff_s, self.backoff_s * (2 ** max(0, failures - 1))) if failures else 0.0
            await asyncio.sleep(delay)

    async def _read(self, ws) -> None:
        async for raw in ws:
            try:
                upd = parse_event(orjson.loads(raw), self.stats)
            except (MalformedEvent, orjson.JSONDecodeError) as exc:
                self.malformed += 1
                log.error("user data stream: malformed event ignored: %s", exc)
                continue
            if upd is None:
                continue
            if isinstance(upd, ListenKeyExpired):
                log.warning("listenKeyExpired: a new key and a new connection")
                self.expired += 1
                self.listen_key = ""
                return
            self.events += 1
            self.sink.on_push(upd)
