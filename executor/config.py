"""Executor configuration: the strategy, exit and paper-broker parameters (env SMC_EXEC_*).

Strategy knobs research needs, all with the seed's rules as defaults: SMC_EXEC_CAP / _CAP_PCT /
_LEVERAGE (position cap: notional <= 10 % of equity), SMC_EXEC_MIN_STOP_COST_X (minimum stop distance
as a multiple of the round-trip cost; 0 = none), SMC_EXEC_TARGET_R (risk/reward multiple of the
target; 0 = the signal's target), SMC_EXEC_MAX_HOLD_MIN (120), SMC_EXEC_STAGNATION_MIN (30) and
SMC_EXEC_STAGNATION_PCT (0.001 = 0.1 %). Funding: SMC_EXEC_FUNDING_FILES (the real settlement history).
SMC_EXEC_PERCENT_PRICE (1): the PERCENT_PRICE band on limit prices (0 = off).

infra.settings.Settings carries the account-wide values (equity, broker, URLs, keys); these are the
executor's own knobs, with the documented defaults.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from executor.brokers.paper import PaperConfig
from executor.exits import ExitRules
from executor.funding import FundingHistory
from executor.risk import RiskConfig
from executor.strategy import StrategyConfig


@dataclass(frozen=True)
class ExecutorConfig:
    start_equity: float = 10_000.0
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    exits: ExitRules = field(default_factory=ExitRules)
    paper: PaperConfig = field(default_factory=PaperConfig)
    funding: FundingHistory = field(default_factory=FundingHistory)   # real settlements (empty: all estimated)
    record_flat: bool = True            # a Decision(skip, flat) for every flat bar (the audit trail's "why not")
    equity_every_bar: bool = False      # an Equity record per bar, not only when the account changed
    exchange_info: str = ""             # path of an exchangeInfo JSON; "" = the bundled real USD-M snapshot
    generic_instruments: bool = False   # opt-in: symbols missing from exchangeInfo modelled generically (paper)
    # bound on the wall time from an entry fill to its stop's acknowledgement (alert beyond it). With an
    # unknown outcome the broker looks the stop up for up to recvWindow (5 s) + margin (1 s): keep it above.
    protect_within_ms: int = 8_000
    halt_after_failures: int = 5        # consecutive exchange errors that halt new entries (auth/ban: at once)
    # PERCENT_PRICE band on limit prices (executor.instruments): entries outside it refused, reduce-only
    # moved to its edge. Off (SMC_EXEC_PERCENT_PRICE=0): limit prices are only tick-rounded (the
    # behaviour before issue 14)
    percent_price: bool = True


def config_from_env(start_equity: float, env: dict | None = None) -> ExecutorConfig:
    env = os.environ if env is None else env
    g = env.get
    paper = PaperConfig(slippage_bps=float(g("SMC_EXEC_SLIPPAGE_BPS", 1.0)),
                        taker_fee=float(g("SMC_EXEC_TAKER_FEE", 0.0005)),
                        funding_rate=float(g("SMC_EXEC_FUNDING_RATE", 0.0001)),
                        default_funding_h=int(g("SMC_EXEC_FUNDING_HOURS", 8)))
    # the position cap (executor.risk): notional <= 10 % of equity by default (the seed's rule), or
    # SMC_EXEC_CAP=margin: margin (notional / SMC_EXEC_LEVERAGE) <= SMC_EXEC_CAP_PCT of equity
    risk = RiskConfig(cap=g("SMC_EXEC_CAP", "notional"), max_notional_pct=float(g("SMC_EXEC_CAP_PCT", 0.10)),
                      leverage=float(g("SMC_EXEC_LEVERAGE", 1.0)),
                      min_stop_cost_multiple=float(g("SMC_EXEC_MIN_STOP_COST_X", 0.0)),
                      round_trip_cost=paper.round_trip_cost())
    strategy = StrategyConfig(
        max_positions=int(g("SMC_EXEC_MAX_POSITIONS", 5)),
        allow_pyramiding=g("SMC_EXEC_PYRAMIDING", "0").lower() in ("1", "true", "yes"),
        daily_loss_limit_pct=float(g("SMC_EXEC_DAILY_LOSS_LIMIT", 0.03)),
        target_r_multiple=float(g("SMC_EXEC_TARGET_R", 0.0)),
        timeframes=tuple(t for t in g("SMC_EXEC_TIMEFRAMES", "").split(",") if t),
        risk=risk)
    exits = ExitRules(max_hold_ms=int(float(g("SMC_EXEC_MAX_HOLD_MIN", 120)) * 60_000),
                      stagnation_after_ms=int(float(g("SMC_EXEC_STAGNATION_MIN", 30)) * 60_000),
                      stagnation_pct=float(g("SMC_EXEC_STAGNATION_PCT", 0.001)))
    # the real funding history: SMC_EXEC_FUNDING_FILES (comma-separated Parquet files, "none" = no
    # history, every settlement estimated); default: every ingest/recorded/funding_*.parquet
    from executor.funding_source import load_funding_history, recorded_funding_files
    files = g("SMC_EXEC_FUNDING_FILES", "")
    paths = [] if files.strip().lower() == "none" else \
        ([f for f in files.split(",") if f.strip()] if files.strip() else recorded_funding_files())
    funding = load_funding_history(paths)
    return ExecutorConfig(start_equity=start_equity, strategy=strategy, exits=exits, paper=paper, funding=funding,
                          record_flat=g("SMC_EXEC_RECORD_FLAT", "1").lower() in ("1", "true", "yes"),
                          equity_every_bar=g("SMC_EXEC_EQUITY_EVERY_BAR", "0").lower() in ("1", "true", "yes"),
                          exchange_info=g("SMC_EXEC_EXCHANGE_INFO", ""),
                          generic_instruments=g("SMC_EXEC_GENERIC_INSTRUMENTS", "0").lower() in ("1", "true", "yes"),
                          protect_within_ms=int(g("SMC_EXEC_PROTECT_WITHIN_MS", 8_000)),
                          halt_after_failures=int(g("SMC_EXEC_HALT_AFTER_FAILURES", 5)),
                          percent_price=g("SMC_EXEC_PERCENT_PRICE", "1").lower() in ("1", "true", "yes"))
