"""Lookahead and warm-up checks on the stream core: full run vs prefix runs, full run vs later starts. Pure.

`lookahead_check` runs the processors' functional core (KlineProcessor, the object the Faust agent calls)
on each symbol's whole series and on prefixes [0, cut) at seeded random cuts, each in a fresh processor
fed in one batch (so a scorer or engine that reads later records of its batch is exposed too). Every signal
a prefix emits must equal, byte for byte, the full run's signal of the same (timeframe, open_time), and
every signal the full run emitted on a base bar before the cut must be in the prefix: anything else is a
lookahead finding (a value that depends on bars after its own). A user feature (bars -> one value per bar,
or columns of them) is checked the same way.

The warm-up ("recursive") check starts the series later (dropping the first `offset` bars) and compares
with the full run at the same bars: values there depend on how much history came before (Wilder ATR,
structure, open FVGs/OBs). That is not lookahead; it is reported apart, per field, with the number of bars
after the start from which values agree (None: they still differ at the last bar compared).
Design: FT lookahead-analysis / recursive-analysis (full run vs run cut at each point), on the production path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import orjson

from processors.core import KlineProcessor, MemoryTables
from processors.scoring import Scorer
from processors.smc import FEATURE_NAMES, SmcConfig
from schemas import Kline, encode_kline, interval_ms

BarsFeature = Callable[[object], object]   # polars DataFrame of one symbol's bars -> values per bar


@dataclass(frozen=True)
class Finding:
    """A value that changed when the bars after `cut_time` were removed (or a signal that appeared or vanished)."""
    symbol: str
    timeframe: str
    open_time: int
    field: str
    full: object
    prefix: object
    cut: int            # bars in the prefix
    cut_time: int       # open_time of the first bar removed


@dataclass(frozen=True)
class WarmupSensitivity:
    """A field whose values differ when the series starts `offset` bars later."""
    symbol: str
    timeframe: str
    field: str
    offset: int                  # bars dropped from the start
    bars_to_agree: int | None    # bars after the new start from which the values agree; None: never within `compared`
    compared: int                # bars (signals) compared
    first_open_time: int         # first differing bar


@dataclass
class Report:
    symbols: list[str] = field(default_factory=list)
    bars: int = 0
    cuts: dict[str, list[int]] = field(default_factory=dict)
    offsets: dict[str, list[int]] = field(default_factory=dict)
    compared: int = 0                                   # signals (and feature values) compared against a prefix
    findings: list[Finding] = field(default_factory=list)
    n_findings: int = 0                                 # all of them; `findings` keeps the first max_findings
    warmup: list[WarmupSensitivity] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.n_findings == 0


# --- values of a signal, named -------------------------------------------------------------------------
def signal_values(raw: bytes) -> dict[str, object]:
    """A signal's emitted values by name: features.<name>, events.<kind> (as JSON), every other field."""
    d = orjson.loads(raw)
    out: dict[str, object] = {}
    for k, v in d.items():
        if k == "features":
            out.update((f"features.{FEATURE_NAMES[i] if i < len(FEATURE_NAMES) else i}", x) for i, x in enumerate(v))
        elif k == "events":
            out.update((f"events.{e}", orjson.dumps(x, option=orjson.OPT_SORT_KEYS).decode()) for e, x in v.items())
        else:
            out[k] = v
    return out


def _same(a, b) -> bool:
    # -0.0 and 0.0 are equal values but different bytes: compare what is emitted
    return a == b and repr(a) == repr(b)


def value_diff(full: bytes, prefix: bytes) -> list[tuple[str, object, object]]:
    """(field, first, second) for each emitted value that differs between two signals, in record order;
    when only the bytes differ (key order, number form), one ("bytes", ...) entry. Also topic replay's diff."""
    a, b = signal_values(full), signal_values(prefix)
    diff = [(k, a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b]) if not _same(a.get(k), b.get(k))]
    return diff or [("bytes", full.decode(), prefix.decode())]


# --- running the core ----------------------------------------------------------------------------------
def kline_records(symbol: str, bars, interval: str) -> list[tuple[bytes, bytes]]:
    """The bars (columns open_time, open, high, low, close, volume) as the replay's kline records."""
    step = interval_ms(interval)
    cols = bars.select(["open_time", "open", "high", "low", "close", "volume"]).rows()
    key = symbol.encode()
    return [(key, encode_kline(Kline(symbol, interval, t, t + step - 1, o, h, l, c, v, source="replay",
                                     received_at=t + step))) for t, o, h, l, c, v in cols]


def run_core(symbol: str, records: Sequence[tuple[bytes, bytes]], make_processor: Callable[[], KlineProcessor]
             ) -> dict[tuple[str, int], tuple[int, bytes]]:
    """A fresh processor over the records in one batch -> {(timeframe, open_time): (index of the base bar
    that emitted it, signal bytes)}. Signals come per base bar: its own, then the HTF bars it closes."""
    proc = make_processor()
    res = proc.process(list(records), MemoryTables())
    out: dict[tuple[str, int], tuple[int, bytes]] = {}
    index, base = -1, proc.interval
    times = {orjson.loads(r)["open_time"]: i for i, (_, r) in enumerate(records)}
    for _, raw in res.signals:
        d = orjson.loads(raw)
        if d["timeframe"] == base:
            index = times.get(d["open_time"], index)
        out[(d["timeframe"], d["open_time"])] = (index, raw)
    return out


def run_batch(symbol: str, bars, proc: KlineProcessor) -> dict[tuple[str, int], tuple[int, bytes]]:
    """run_core for the numba batch form (processors/batch_signals.py) over the bars: the same keys, the
    base bar that closes each HTF bar as its emitter (processors/smc/batch.aggregate_htf)."""
    from processors.batch_signals import batch_signals
    from processors.smc.batch import _arrays, aggregate_htf
    from schemas import encode_signal
    cfg = proc.config
    _, close_idx = aggregate_htf(_arrays(bars), cfg.interval_ms, cfg.htf_factor)
    index = {t: i for i, t in enumerate(bars["open_time"].to_list())}
    closes = iter(close_idx.tolist())
    out = {}
    for sig in batch_signals(bars, symbol, proc.scorer, proc.strategy_version, cfg):
        i = index[sig.open_time] if sig.timeframe == proc.interval else next(closes)
        out[(sig.timeframe, sig.open_time)] = (i, encode_signal(sig))
    return out


def feature_values(fn: BarsFeature, bars) -> dict[str, np.ndarray | list]:
    """A user feature's output as named columns of one value per bar (a mapping / DataFrame: its columns)."""
    v = fn(bars)
    cols = {c: v[c] for c in v.columns} if hasattr(v, "columns") else dict(v) if isinstance(v, Mapping) else {"": v}
    out = {}
    for c, x in cols.items():
        x = x.to_numpy() if hasattr(x, "to_numpy") else np.asarray(x)
        if len(x) != bars.height:
            raise ValueError(f"feature {getattr(fn, '__name__', fn)}{'.' + c if c else ''}: {len(x)} values "
                             f"for {bars.height} bars (one value per bar expected)")
        out[c] = x
    return out


def _bits(x) -> object:
    try:
        return np.float64(x).tobytes()
    except (TypeError, ValueError):
        return x


# --- the checks ----------------------------------------------------------------------------------------
def lookahead_check(bars_by_symbol: Mapping[str, object], make_processor: Callable[[], KlineProcessor], *,
                    cuts: int = 8, seed: int = 0, features: Mapping[str, BarsFeature] | None = None,
                    offsets: int = 2, max_findings: int = 10_000, form: str = "stream",
                    on_progress: Callable[[str], None] | None = None) -> Report:
    """Full run vs prefix runs at `cuts` seeded random cut points per symbol, and full run vs runs started
    `offsets` seeded random bars later (warm-up sensitivity).

    bars_by_symbol: symbol -> polars DataFrame of its bars in open_time order (open_time, open, high, low,
    close, volume). make_processor: a fresh KlineProcessor (scorer, config, interval) per run.
    features: name -> user feature (bars -> values per bar), checked the same way. form: "stream" (the
    processors' core, fed kline records) or "batch" (the numba batch engine over the bars).
    on_progress(what) is called after each run (for a progress bar: 1 + cuts + offsets runs per symbol).
    """
    rng = np.random.default_rng(seed)
    features = dict(features or {})
    rep = Report(symbols=list(bars_by_symbol))
    interval = make_processor().interval
    if form not in ("stream", "batch"):
        raise ValueError(f"form {form!r}: expected stream or batch")

    def run(symbol: str, bars, records, lo: int, hi: int):
        if form == "batch":
            got = run_batch(symbol, bars.slice(lo, hi - lo), make_processor())
            return got
        return run_core(symbol, records[lo:hi], make_processor)
    tick = on_progress or (lambda _what: None)

    def found(f: Finding) -> None:
        rep.n_findings += 1
        if len(rep.findings) < max_findings:
            rep.findings.append(f)

    for symbol, bars in bars_by_symbol.items():
        n = bars.height
        rep.bars += n
        times = bars["open_time"].to_list()
        records = kline_records(symbol, bars, interval) if form == "stream" else []
        full = run(symbol, bars, records, 0, n)
        full_feats = {name: feature_values(fn, bars) for name, fn in features.items()}
        tick(f"{symbol} full")
        picks = sorted(set(rng.integers(1, n, size=cuts).tolist())) if n > 1 else []
        rep.cuts[symbol] = picks
        for cut in picks:
            part = run(symbol, bars, records, 0, cut)
            cut_time = times[cut]
            for key, (_, raw) in part.items():
                rep.compared += 1
                ref = full.get(key)
                if ref is None:
                    found(Finding(symbol, key[0], key[1], "signal", "absent", "present", cut, cut_time))
                elif ref[1] != raw:
                    for name, a, b in value_diff(ref[1], raw):
                        found(Finding(symbol, key[0], key[1], name, a, b, cut, cut_time))
            for key, (index, _) in full.items():
                if index < cut and key not in part:
                    found(Finding(symbol, key[0], key[1], "signal", "present", "absent", cut, cut_time))
            for name, fn in features.items():
                got = feature_values(fn, bars.head(cut))
                for col, values in full_feats[name].items():
                    label = f"feature {name}" + (f".{col}" if col else "")
                    for i in range(cut):
                        rep.compared += 1
                        if _bits(values[i]) != _bits(got[col][i]):
                            found(Finding(symbol, interval, times[i], label, values[i].item() if hasattr(values[i], "item")
                                          else values[i], got[col][i].item() if hasattr(got[col][i], "item")
                                          else got[col][i], cut, cut_time))
            tick(f"{symbol} cut {cut}")
        starts = sorted(set(rng.integers(1, max(2, n // 3), size=offsets).tolist())) if n > 3 and offsets else []
        rep.offsets[symbol] = starts
        for k in starts:
            later = run(symbol, bars, records, k, n)
            rep.warmup += _warmup(symbol, k, full, later)
            for name, fn in features.items():
                got = feature_values(fn, bars.slice(k))
                for col, values in full_feats[name].items():
                    label = f"feature {name}" + (f".{col}" if col else "")
                    diff = [i for i in range(k, n) if _bits(values[i]) != _bits(got[col][i - k])]
                    if diff:
                        last = diff[-1] - k + 1
                        rep.warmup.append(WarmupSensitivity(symbol, interval, label, k, None if diff[-1] == n - 1
                                                            else last, n - k, times[diff[0]]))
            tick(f"{symbol} offset {k}")
    return rep


def _warmup(symbol: str, offset: int, full: dict, later: dict) -> list[WarmupSensitivity]:
    """Per (timeframe, field): how many signals after the later start the two runs still differ."""
    by_tf: dict[str, list[tuple[int, bytes, bytes]]] = {}
    for key, (_, raw) in sorted(later.items(), key=lambda kv: kv[0][1]):
        ref = full.get(key)
        if ref is not None:
            by_tf.setdefault(key[0], []).append((key[1], ref[1], raw))
    out = []
    for tf, rows in by_tf.items():
        last: dict[str, int] = {}
        first: dict[str, int] = {}
        for i, (t, a, b) in enumerate(rows):
            if a == b:
                continue
            for name, _, _ in value_diff(a, b):
                last[name] = i
                first.setdefault(name, t)
        for name, i in last.items():
            out.append(WarmupSensitivity(symbol, tf, name, offset, None if i == len(rows) - 1 else i + 1,
                                         len(rows), first[name]))
    return out


def processor_factory(scorer: Scorer, strategy_version: str, interval: str, config: SmcConfig
                      ) -> Callable[[], KlineProcessor]:
    """Fresh processors as the worker builds them (no time limit or universe: the input is the user's)."""
    return lambda: KlineProcessor(scorer, strategy_version, interval, config.htf_factor, config=config)
