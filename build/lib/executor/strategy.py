"""The ICT scalper's entry decision (pure): one signal + a view of the account -> enter or skip, why.

Checks, in order (the first that fails names the Decision's reason):
  flat -> below_threshold (confidence <= 0.60) -> timeframe (not traded) -> daily_loss_limit
  -> already_in_position (no pyramiding per symbol by default) -> max_positions -> sizing
  (zero_distance | invalid_prices | min_notional | min_qty) -> enter (reason ok | notional_cap).
Entry/stop/target come from the signal; with `target_r_multiple` > 0 the target is re-derived as
entry +/- R * |entry - stop|.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from executor.instruments import Instrument
from executor.risk import RiskConfig, Sizing, risk_fraction, size_position
from schemas.signal import Signal


@dataclass(frozen=True, slots=True)
class StrategyConfig:
    max_positions: int = 5
    allow_pyramiding: bool = False
    daily_loss_limit_pct: float = 0.03        # of start-of-day equity; halts new entries for the UTC day
    target_r_multiple: float = 0.0            # 0 = the signal's target
    timeframes: tuple[str, ...] = ()          # traded timeframes; () = all
    risk: RiskConfig = field(default_factory=RiskConfig)


@dataclass(frozen=True, slots=True)
class AccountView:
    equity: float                              # mark-to-market equity used for sizing
    day_start_equity: float
    symbols_in_position: frozenset[str]        # open, pending or closing
    open_positions: int


@dataclass(frozen=True, slots=True)
class EntryDecision:
    action: str                                # enter | skip
    reason: str
    risk_pct: float = 0.0
    sizing: Sizing | None = None


def derive_target(side: str, entry: float, stop: float, target: float, r_multiple: float) -> float:
    if r_multiple <= 0:
        return target
    dist = abs(entry - stop)
    return entry + r_multiple * dist if side == "long" else entry - r_multiple * dist


def daily_loss_hit(account: AccountView, limit_pct: float) -> bool:
    if limit_pct <= 0 or account.day_start_equity <= 0:
        return False
    loss = account.day_start_equity - account.equity
    return loss >= limit_pct * account.day_start_equity - 1e-9


def decide(sig: Signal, account: AccountView, inst: Instrument | None, cfg: StrategyConfig = StrategyConfig()
           ) -> EntryDecision:
    if sig.side not in ("long", "short"):
        return EntryDecision("skip", "flat")
    frac = risk_fraction(sig.confidence, cfg.risk)
    if frac <= 0:
        return EntryDecision("skip", "below_threshold")
    if cfg.timeframes and sig.timeframe not in cfg.timeframes:
        return EntryDecision("skip", "timeframe", frac)
    if daily_loss_hit(account, cfg.daily_loss_limit_pct):
        return EntryDecision("skip", "daily_loss_limit", frac)
    if not cfg.allow_pyramiding and sig.symbol in account.symbols_in_position:
        return EntryDecision("skip", "already_in_position", frac)
    if account.open_positions >= cfg.max_positions:
        return EntryDecision("skip", "max_positions", frac)
    if inst is None:
        return EntryDecision("skip", "unknown_symbol", frac)
    target = derive_target(sig.side, sig.entry, sig.stop, sig.target, cfg.target_r_multiple)
    sizing = size_position(sig.side, sig.confidence, sig.entry, sig.stop, target, account.equity, inst,
                           market=True, cfg=cfg.risk)
    if not sizing.ok:
        return EntryDecision("skip", sizing.reason, frac, sizing)
    return EntryDecision("enter", sizing.reason, frac, sizing)
