"""Position sizing (pure): confidence tier -> risk amount -> quantity, with the exchange's rules.

Rules (DESIGN.md "Risk and exits"):
* tiers by confidence, strict `>`: > 0.85 -> 2.0 % of equity at risk, > 0.70 -> 1.0 %, > 0.60 -> 0.5 %,
  else no trade (exactly 0.60 is no trade, exactly 0.70 is the 0.5 % tier, exactly 0.85 the 1 % tier);
* prices on the tick grid: entry to the nearest tick, the stop rounded AWAY from the entry (a wider
  stop -> a smaller quantity -> never more risk than planned), the target rounded TOWARD the entry;
* quantity = risk amount / |entry - stop|, capped by the position cap (`max_notional`), rounded DOWN
  to the step (MARKET_LOT_SIZE step for market orders). The cap, explicit (RiskConfig.cap):
    - "notional" (default, the seed's rule): notional = qty * entry <= cap_pct (10 %) of equity;
    - "margin": the initial margin notional / leverage <= cap_pct of equity, i.e. notional <=
      cap_pct * leverage * equity (10 % at 10x lets a position be as large as the equity).
  With a 0.5 % stop, a 0.5 % risk wants 100 % of equity as notional: the default cap binds on most
  entries and the tiers then size alike; the run's report shows per tier how often (infra.sizing_report);
* skipped as `stop_too_tight` when the stop distance |entry - stop| / entry is below
  `min_stop_cost_multiple` x the round-trip cost (`round_trip_cost`: taker fee and slippage, both
  sides; executor.brokers.paper.PaperConfig.round_trip_cost); 0 = no minimum (the seed's rule);
* skipped when qty * entry < min notional (Binance checks the mark price for MARKET orders; the
  signal's entry is our best estimate of it) or qty < minQty.
"""
from __future__ import annotations

from dataclasses import dataclass

from executor.instruments import Instrument, _dec, round_to
from schemas.tiers import TIER_EDGES

# (confidence strictly above, fraction of equity at risk): the edges are schemas.tiers.TIER_EDGES
TIERS: tuple[tuple[float, float], ...] = tuple(zip(TIER_EDGES, (0.020, 0.010, 0.005)))
MAX_NOTIONAL_PCT = 0.10
CAPS = ("notional", "margin")


@dataclass(frozen=True, slots=True)
class RiskConfig:
    tiers: tuple[tuple[float, float], ...] = TIERS      # (confidence strictly above, risk fraction)
    max_notional_pct: float = MAX_NOTIONAL_PCT          # cap_pct: fraction of equity (notional or margin)
    cap: str = "notional"                               # notional | margin (see the module docstring)
    leverage: float = 1.0                               # cap="margin": notional <= max_notional_pct * leverage * equity
    min_stop_cost_multiple: float = 0.0                 # stop distance >= this x round_trip_cost (0 = off)
    round_trip_cost: float = 0.0                        # fraction of notional: entry + exit fees and slippage

    def __post_init__(self) -> None:
        if self.cap not in CAPS:
            raise ValueError(f"RiskConfig.cap={self.cap!r}: use one of {CAPS}")
        if not self.max_notional_pct > 0 or not self.leverage >= 1:
            raise ValueError(f"RiskConfig: max_notional_pct={self.max_notional_pct} must be > 0 and "
                             f"leverage={self.leverage} >= 1")
        if self.min_stop_cost_multiple < 0 or self.round_trip_cost < 0:
            raise ValueError(f"RiskConfig: min_stop_cost_multiple={self.min_stop_cost_multiple} and "
                             f"round_trip_cost={self.round_trip_cost} must be >= 0")
        if self.min_stop_cost_multiple > 0 and self.round_trip_cost <= 0:
            raise ValueError("RiskConfig: min_stop_cost_multiple needs the round_trip_cost it multiplies")


def max_notional(equity: float, cfg: RiskConfig = RiskConfig()) -> float:
    """The position cap as a notional (USDT): the one definition of the cap."""
    lev = cfg.leverage if cfg.cap == "margin" else 1.0
    return equity * cfg.max_notional_pct * lev


@dataclass(frozen=True, slots=True)
class Sizing:
    ok: bool
    reason: str            # ok | notional_cap | below_threshold | zero_distance | invalid_prices | stop_too_tight | min_notional | min_qty | no_equity
    risk_pct: float = 0.0  # fraction of equity at risk (0.02 = 2 %)
    qty: float = 0.0
    entry: float = 0.0
    stop: float = 0.0
    target: float = 0.0
    risk_amount: float = 0.0
    notional: float = 0.0
    capped: bool = False


def risk_fraction(confidence: float, cfg: RiskConfig = RiskConfig()) -> float:
    """Fraction of equity at risk for a confidence (0.0 = no trade)."""
    for above, frac in cfg.tiers:
        if confidence > above:
            return frac
    return 0.0


def round_prices(side: str, entry: float, stop: float, target: float, tick: float) -> tuple[float, float, float]:
    e = round_to(entry, tick, "nearest")
    if side == "long":
        return e, round_to(stop, tick, "floor"), round_to(target, tick, "floor")
    return e, round_to(stop, tick, "ceil"), round_to(target, tick, "ceil")


def size_position(side: str, confidence: float, entry: float, stop: float, target: float, equity: float,
                  inst: Instrument, market: bool = True, cfg: RiskConfig = RiskConfig()) -> Sizing:
    frac = risk_fraction(confidence, cfg)
    if frac <= 0.0:
        return Sizing(False, "below_threshold")
    if equity <= 0:
        return Sizing(False, "no_equity", frac)
    e, s, t = round_prices(side, entry, stop, target, inst.tick_size)
    if side == "long" and not s < e:
        return Sizing(False, "zero_distance" if s == e else "invalid_prices", frac, 0.0, e, s, t)
    if side == "short" and not e < s:
        return Sizing(False, "zero_distance" if s == e else "invalid_prices", frac, 0.0, e, s, t)
    if side not in ("long", "short"):
        return Sizing(False, "invalid_prices", frac)
    distance = float(abs(_dec(e) - _dec(s)))      # exact on the tick grid (10.0 - 9.2 is not 0.8 in floats)
    if cfg.min_stop_cost_multiple > 0 and distance / e < cfg.min_stop_cost_multiple * cfg.round_trip_cost - 1e-15:
        return Sizing(False, "stop_too_tight", frac, 0.0, e, s, t)
    risk_amount = equity * frac
    qty_risk = risk_amount / distance
    cap_notional = max_notional(equity, cfg)
    qty_cap = cap_notional / e
    capped = qty_cap < qty_risk
    raw_qty = min(qty_risk, qty_cap)
    step = inst.market_step_size if market else inst.step_size
    qty = round_to(raw_qty * (1 + 1e-9), step, "floor")   # 1e-9 absorbs float noise like 6.249999999999995
    if qty * e > cap_notional * (1 + 1e-9) or qty * distance > risk_amount * (1 + 1e-9):
        qty = round_to(raw_qty, step, "floor")             # the nudge must never break a cap
    notional = qty * e
    min_qty = inst.market_min_qty if market else inst.min_qty
    if qty <= 0 or notional < inst.min_notional:
        return Sizing(False, "min_notional", frac, qty, e, s, t, risk_amount, notional, capped)
    if qty < min_qty:
        return Sizing(False, "min_qty", frac, qty, e, s, t, risk_amount, notional, capped)
    return Sizing(True, "notional_cap" if capped else "ok", frac, qty, e, s, t, risk_amount, notional, capped)
