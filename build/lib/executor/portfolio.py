"""Positions, cash and equity with fees and funding; a small per-position state machine.

Futures accounting (USDT-M, one-way): opening a position moves no cash; the wallet (`cash`) changes
by realized price PnL, fees and funding. equity = cash + unrealized PnL at the last marks (each
symbol's last bar close).

Position states:   pending --fill--> open --exit sent--> closing --fill--> closed
                   pending --reject/cancel--> canceled        open --stop/target fill--> closed
Position records: `realized_pnl` is NET (price PnL - fees - funding) so analytics' win rate is net;
`fees` and `funding` hold the components (funding > 0 = paid).

Rebuild: `Portfolio.rebuild(start_equity, positions)` replays the last Position record of every
position (e.g. read back from the compacted `positions` topic or ClickHouse FINAL).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from schemas.trading import Equity, Position

TRANSITIONS = {
    "pending": {"open", "canceled"},
    "open": {"closing", "closed"},
    "closing": {"closed", "open"},       # closing -> open when an exit order is rejected
    "closed": set(),
    "canceled": set(),
}


class IllegalTransition(RuntimeError):
    pass


@dataclass
class PositionState:
    position_id: str
    signal_id: str
    symbol: str
    timeframe: str
    side: str
    qty: float
    stop: float
    target: float
    confidence: float = 0.0
    pattern: str = ""
    status: str = "pending"
    entry_price: float = 0.0
    opened_at: int = 0
    closed_at: int = 0
    exit_price: float = 0.0
    exit_reason: str = ""
    gross_pnl: float = 0.0
    fees: float = 0.0
    funding: float = 0.0
    updated_at: int = 0
    last_funding_ts: int = 0
    flatten: bool = False
    pending_exit: str = ""

    @property
    def sign(self) -> float:
        return 1.0 if self.side == "long" else -1.0

    def to(self, status: str) -> None:
        if status not in TRANSITIONS[self.status]:
            raise IllegalTransition(f"position {self.position_id}: {self.status} -> {status}")
        self.status = status

    def touch(self, ts: int) -> None:
        # strictly increasing version per position, so ReplacingMergeTree(updated_at) keeps the last
        self.updated_at = max(int(ts), self.updated_at + 1)

    def unrealized(self, mark: float) -> float:
        if self.status not in ("open", "closing") or mark <= 0:
            return 0.0
        return self.sign * (mark - self.entry_price) * self.qty

    def record(self) -> Position:
        return Position(
            position_id=self.position_id, signal_id=self.signal_id, symbol=self.symbol, side=self.side,
            qty=self.qty, entry_price=self.entry_price, stop=self.stop, target=self.target,
            opened_at=self.opened_at, status="closed" if self.status == "closed" else "open",
            closed_at=self.closed_at, exit_price=self.exit_price, exit_reason=self.exit_reason,
            realized_pnl=self.gross_pnl - self.fees - self.funding, fees=self.fees, funding=self.funding,
            confidence=self.confidence, pattern=self.pattern, updated_at=self.updated_at)


class Portfolio:
    def __init__(self, start_equity: float) -> None:
        self.start_equity = float(start_equity)
        self.cash = float(start_equity)
        self.positions: dict[str, PositionState] = {}     # live ones (pending/open/closing)
        self.marks: dict[str, float] = {}
        self.realized_gross = 0.0
        self.fees = 0.0
        self.funding = 0.0
        self.closed_trades = 0
        self.day = -1
        self.day_start_equity = float(start_equity)

    # --- queries ---------------------------------------------------------------------------------
    def unrealized(self) -> float:
        return sum((p.unrealized(self.marks.get(p.symbol, 0.0)) for p in self.positions.values()), 0.0)

    def equity(self) -> float:
        return self.cash + self.unrealized()

    def realized_net(self) -> float:
        return self.realized_gross - self.fees - self.funding

    def open_count(self) -> int:
        return len(self.positions)

    def symbols_in_position(self) -> frozenset[str]:
        return frozenset(p.symbol for p in self.positions.values())

    def of_symbol(self, symbol: str) -> list[PositionState]:
        return [p for p in self.positions.values() if p.symbol == symbol]

    def snapshot(self, ts: int, wall_ts: int = 0) -> Equity:
        return Equity(ts=int(ts), equity=self.equity(), cash=self.cash, realized_pnl=self.realized_net(),
                      unrealized_pnl=self.unrealized(), open_positions=sum(1 for p in self.positions.values()
                                                                            if p.status in ("open", "closing")))

    # --- events ----------------------------------------------------------------------------------
    def roll_day(self, ts: int) -> None:
        day = int(ts) // 86_400_000
        if day != self.day:
            self.day = day
            self.day_start_equity = self.equity()

    def mark(self, symbol: str, price: float) -> None:
        self.marks[symbol] = float(price)

    def add_pending(self, pos: PositionState) -> None:
        if pos.position_id in self.positions:
            raise IllegalTransition(f"position {pos.position_id} exists")
        self.positions[pos.position_id] = pos

    def cancel(self, pid: str, ts: int) -> PositionState:
        pos = self.positions.pop(pid)
        pos.to("canceled")
        pos.touch(ts)
        return pos

    def fill_entry(self, pid: str, price: float, qty: float, fee: float, ts: int) -> PositionState:
        pos = self.positions[pid]
        pos.to("open")
        pos.entry_price, pos.qty, pos.opened_at = float(price), float(qty), int(ts)
        pos.last_funding_ts = int(ts) - 1
        self._fee(pos, fee)
        pos.touch(ts)
        self.marks.setdefault(pos.symbol, float(price))
        return pos

    def fill_exit(self, pid: str, price: float, fee: float, ts: int, reason: str) -> PositionState:
        pos = self.positions.pop(pid)
        pos.to("closed")
        gross = pos.sign * (float(price) - pos.entry_price) * pos.qty
        pos.gross_pnl += gross
        self.realized_gross += gross
        self.cash += gross
        self._fee(pos, fee)
        pos.exit_price, pos.closed_at, pos.exit_reason = float(price), int(ts), reason
        pos.touch(ts)
        self.closed_trades += 1
        return pos

    def charge_funding(self, pid: str, amount: float, ts: int) -> PositionState:
        pos = self.positions[pid]
        pos.funding += amount
        self.funding += amount
        self.cash -= amount
        pos.touch(ts)
        return pos

    def _fee(self, pos: PositionState, fee: float) -> None:
        pos.fees += fee
        self.fees += fee
        self.cash -= fee

    # --- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"start_equity": self.start_equity, "cash": self.cash, "marks": self.marks,
                "realized_gross": self.realized_gross, "fees": self.fees, "funding": self.funding,
                "closed_trades": self.closed_trades, "day": self.day, "day_start_equity": self.day_start_equity,
                "positions": [dataclasses.asdict(p) for p in self.positions.values()]}

    @classmethod
    def from_dict(cls, d: dict) -> "Portfolio":
        p = cls(d["start_equity"])
        for k in ("cash", "realized_gross", "fees", "funding", "day_start_equity"):
            setattr(p, k, float(d[k]))
        p.closed_trades, p.day = int(d["closed_trades"]), int(d["day"])
        p.marks = {k: float(v) for k, v in d["marks"].items()}
        for pd in d["positions"]:
            ps = PositionState(**pd)
            p.positions[ps.position_id] = ps
        return p

    @classmethod
    def rebuild(cls, start_equity: float, records: list[Position], timeframe: str = "") -> "Portfolio":
        """Cash and open positions from Position records (the latest per position_id wins)."""
        latest: dict[str, Position] = {}
        for r in records:
            cur = latest.get(r.position_id)
            if cur is None or r.updated_at >= cur.updated_at:
                latest[r.position_id] = r
        p = cls(start_equity)
        for r in sorted(latest.values(), key=lambda r: (r.opened_at, r.position_id)):
            gross = r.realized_pnl + r.fees + r.funding
            p.realized_gross += gross
            p.fees += r.fees
            p.funding += r.funding
            p.cash += r.realized_pnl
            if r.status == "closed":
                p.closed_trades += 1
                continue
            ps = PositionState(position_id=r.position_id, signal_id=r.signal_id, symbol=r.symbol,
                               timeframe=timeframe, side=r.side, qty=r.qty, stop=r.stop, target=r.target,
                               confidence=r.confidence, pattern=r.pattern, status="open",
                               entry_price=r.entry_price, opened_at=r.opened_at, gross_pnl=gross,
                               fees=r.fees, funding=r.funding, updated_at=r.updated_at,
                               last_funding_ts=r.updated_at if r.funding else r.opened_at - 1)
            p.positions[ps.position_id] = ps
            p.marks.setdefault(r.symbol, r.entry_price)
        return p
