"""IngestCore: the synchronous heart of the live ingest (no I/O, no asyncio, injectable clock).

Raw WebSocket message -> parse -> validate -> universe check -> dedupe -> gap check -> emit.
Per symbol, bars are emitted in strictly increasing open_time: when a bar arrives after a gap, it is
held (with any later ones) until the backfill of the gap comes back, so the `klines` topic is in order
per symbol. Everything bad (malformed JSON, invalid bar, unknown symbol, stale or duplicate bar) is
counted and handed to `reject(stage, reason, raw, key)` (the service sends it to the dlq); it never
raises to the connection. A bar delivered again with the same numbers (rotation overlap, a live bar
after its REST backfill, a re-sent bar after a restart) is not an error: it is dropped and counted in
`stats.duplicates`, never sent to the dlq; a re-delivery with OTHER numbers is a `conflict` and is.

Memory across restarts and universe changes: `resume(last_bars)` seeds the per-symbol watermark from
the newest bars already in the `klines` topic, so a restart backfills exactly what is missing; a symbol
that leaves the universe keeps its watermark (`retired`) and, when it returns, is backfilled from it.

Backfill work is returned as `BackfillJob`s; the async shell fetches them and calls
`backfill_done(job, klines)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import orjson

from ingest.backfill import GapTracker, last_closed_open
from ingest.ws import Deduper, bar_fingerprint, parse_kline_event
from schemas import Kline, SchemaError, encode_kline, interval_ms


@dataclass(frozen=True)
class BackfillJob:
    symbol: str
    first: int      # open_time of the first missing bar
    last: int       # open_time of the last missing bar
    reason: str     # gap | reconnect | start | silence


@dataclass
class IngestStats:
    received: int = 0        # WebSocket messages
    closed: int = 0          # closed klines parsed
    produced: int = 0        # klines handed to the producer (live + backfill)
    backfilled: int = 0      # of which source=backfill
    duplicates: int = 0      # identical re-deliveries dropped (not errors, not in the dlq)
    conflicts: int = 0       # re-deliveries with other numbers than the bar produced (dlq)
    stale: int = 0
    rejected: int = 0        # everything sent to the dlq (conflicts and stale included)
    gaps: int = 0            # backfill jobs started
    unfilled: int = 0        # bars a backfill asked for and REST did not have
    reasons: dict[str, int] = field(default_factory=dict)


class IngestCore:
    def __init__(self, interval: str, emit: Callable[[Kline], None],
                 reject: Callable[[str, str, bytes | str | None, str | None], None],
                 clock: Callable[[], int], grace_ms: int = 10_000, stage: str = "ingest.ws"):
        self.interval = interval
        self.step = interval_ms(interval)
        self.emit = emit
        self.reject_cb = reject
        self.clock = clock
        self.stage = stage
        self.gaps = GapTracker(self.step, grace_ms)
        self.dedupe = Deduper()
        self.known: set[str] = set()
        self.retired: dict[str, int] = {}             # symbol -> last produced open_time, while out of the universe
        self.pending: dict[str, list[Kline]] = {}     # symbol -> live bars held behind a backfill
        self.stats = IngestStats()

    # ---- universe ---------------------------------------------------------------------------------
    def resume(self, last_bars) -> None:
        """The newest bar of each symbol already in the klines topic: continue right after it."""
        for k in last_bars:
            self.gaps.produced(k.symbol, k.open_time)
            self.dedupe.add(k.symbol, k.interval, k.open_time, bar_fingerprint(k))

    def add_symbols(self, symbols, start_ms: int | None = None, not_before_ms: int | None = None) -> dict[str, int]:
        """Track symbols and guarantee every bar after what is already known of each (resume(), or its
        last bar before it left the universe); a symbol with no history starts at start_ms. Bars opening
        before not_before_ms are not wanted. Returns {symbol: bars skipped} for the symbols whose history
        ended before not_before_ms (the caller says so: those bars are not backfilled)."""
        skipped: dict[str, int] = {}
        step = self.step
        floor = None if not_before_ms is None else -(-not_before_ms // step) * step - step
        for s in symbols:
            self.known.add(s)
            last = self.gaps.last_of(s)
            if last is None:
                last = self.retired.pop(s, None)
            if last is None and start_ms is not None:
                last = start_ms - start_ms % step - step
            if last is None:
                continue
            if floor is not None and last < floor:
                skipped[s] = (floor - last) // step
                last = floor
            self.gaps.continue_after(s, last)
        return skipped

    def remove_symbols(self, symbols) -> None:
        """Stop tracking; each symbol's last produced bar is kept for when it returns."""
        for s in symbols:
            self.known.discard(s)
            self.pending.pop(s, None)
            last = self.gaps.retire(s)
            if last is not None:
                self.retired[s] = last

    # ---- rejects --------------------------------------------------------------------------------
    def _reject(self, kind: str, reason: str, raw, key: str | None) -> None:
        self.stats.rejected += 1
        self.stats.reasons[kind] = self.stats.reasons.get(kind, 0) + 1
        self.reject_cb(self.stage, reason, raw, key)

    # ---- live path ------------------------------------------------------------------------------
    def on_raw(self, raw: bytes | str) -> list[BackfillJob]:
        self.stats.received += 1
        try:
            k = parse_kline_event(raw, self.clock())
        except SchemaError as exc:
            kind = "malformed" if exc.field == "<payload>" else "invalid"
            key = None
            try:
                obj = orjson.loads(raw)
                key = (obj.get("data", obj).get("k") or {}).get("s")
            except Exception:
                pass
            self._reject(kind, str(exc), raw, key if isinstance(key, str) else None)
            return []
        if k is None:
            return []
        self.stats.closed += 1
        if k.interval != self.interval:
            self._reject("invalid", f"Kline.interval={k.interval!r}: this ingest runs {self.interval}", raw, k.symbol)
            return []
        return self.on_live(k, raw)

    def on_live(self, k: Kline, raw: bytes | str | None = None) -> list[BackfillJob]:
        if k.symbol not in self.known:
            self._reject("unknown_symbol", f"Kline.symbol={k.symbol!r}: not in the universe", raw or encode_kline(k),
                         k.symbol)
            return []
        held = self.pending.get(k.symbol)
        if held is not None:
            held.append(k)
            return []
        return self._accept(k, raw)

    def _accept(self, k: Kline, raw) -> list[BackfillJob]:
        fingerprint = bar_fingerprint(k)
        verdict = self.dedupe.check(k.symbol, k.interval, k.open_time, fingerprint)
        if verdict == "duplicate":
            self.stats.duplicates += 1            # the same bar again: expected, not an error
            return []
        if verdict != "new":
            if verdict == "conflict":
                self.stats.conflicts += 1
                what = "conflicting duplicate bar (other numbers than the bar produced)"
            else:
                self.stats.stale += 1
                what = "stale bar"
            self._reject(verdict, f"Kline.open_time={k.open_time}: {what} of {k.symbol} {k.interval} "
                                  f"(newest produced {self.dedupe.newest.get((k.symbol, k.interval))})",
                         raw or encode_kline(k), k.symbol)
            return []
        gap = self.gaps.on_bar(k.symbol, k.open_time)
        if gap is not None:
            self.pending[k.symbol] = [k]
            self.stats.gaps += 1
            return [BackfillJob(k.symbol, gap[0], gap[1], "gap")]
        self._produce(k, fingerprint)
        return []

    def _produce(self, k: Kline, fingerprint=None) -> None:
        self.emit(k)
        self.dedupe.add(k.symbol, k.interval, k.open_time, bar_fingerprint(k) if fingerprint is None else fingerprint)
        self.gaps.produced(k.symbol, k.open_time)
        self.stats.produced += 1
        if k.source == "backfill":
            self.stats.backfilled += 1

    # ---- gap triggers ----------------------------------------------------------------------------
    def _jobs(self, symbols, grace_ms: int | None, reason: str) -> list[BackfillJob]:
        jobs = []
        for sym, (a, b) in sorted(self.gaps.due([s for s in symbols if s in self.known and s not in self.pending],
                                               self.clock(), grace_ms).items()):
            self.pending[sym] = []
            self.stats.gaps += 1
            jobs.append(BackfillJob(sym, a, b, reason))
        return jobs

    def on_reconnect(self, symbols) -> list[BackfillJob]:
        """After a reconnect (or on start): every bar closed by now that was not produced."""
        return self._jobs(symbols, 0, "reconnect")

    def on_start(self, symbols) -> list[BackfillJob]:
        """At start-up, before any connection: every closed bar after what the topic already holds."""
        return self._jobs(symbols, 0, "start")

    def on_tick(self) -> list[BackfillJob]:
        """Symbols silent past the grace period: backfill the bars closed more than grace ago."""
        return self._jobs(list(self.known), None, "silence")

    # ---- backfill results ---------------------------------------------------------------------------
    def backfill_done(self, job: BackfillJob, klines: list[Kline]) -> list[BackfillJob]:
        held = self.pending.pop(job.symbol, [])
        if job.symbol not in self.known:
            return []
        got = 0
        for k in sorted(klines, key=lambda x: x.open_time):
            if k.symbol != job.symbol or not (job.first <= k.open_time <= job.last):
                continue
            if self.dedupe.check(k.symbol, k.interval, k.open_time) != "new":
                continue
            self._produce(k)
            got += 1
        self.stats.unfilled += (job.last - job.first) // self.step + 1 - got
        # what REST did not have is given up (never re-requested forever); the stream moves on
        self.gaps.produced(job.symbol, job.last)
        jobs: list[BackfillJob] = []
        for k in sorted(held, key=lambda x: x.open_time):
            if job.symbol in self.pending:          # a new gap opened: keep holding the rest
                self.pending[job.symbol].append(k)
                continue
            jobs += self._accept(k, None)
        return jobs

    def backfill_failed(self, job: BackfillJob, give_up: bool = False) -> list[BackfillJob]:
        """REST failed: retry the same job (the held bars stay held), or give the gap up."""
        if give_up or job.symbol not in self.known:
            return self.backfill_done(job, [])
        self.pending.setdefault(job.symbol, [])
        return [job]

    def last_closed(self) -> int:
        return last_closed_open(self.clock(), self.step)
