"""Load the real funding history (thin adapter): Parquet files packed by ingest.pack_recorded
(columns symbol, funding_time, funding_rate, mark_price) -> executor.funding.FundingHistory."""
from __future__ import annotations

from pathlib import Path

from executor.funding import FundingHistory

RECORDED = Path(__file__).resolve().parent.parent / "ingest" / "recorded"
COLUMNS = ("symbol", "funding_time", "funding_rate", "mark_price")


def recorded_funding_files() -> list[Path]:
    """The funding files shipped with the repo (one per recorded perps set)."""
    return sorted(RECORDED.glob("funding_*.parquet"))


def load_funding_history(paths) -> FundingHistory:
    import polars as pl
    rows = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"funding file not found: {p}")
        df = pl.read_parquet(p)
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{p}: funding file lacks columns {missing} (has {df.columns})")
        rows += df.select(COLUMNS).iter_rows()
    return FundingHistory.from_rows(rows)
