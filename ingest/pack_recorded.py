"""Pack the project's shared real data (Binance USD-M perpetual 1m klines, funding settlements, 8h mark
candles) into the compact zstd Parquet files a clone ships in ingest/recorded/, and verify them.

    python -m ingest.pack_recorded ../shared/data            # writes ingest/recorded/perps_*.parquet

Values are unchanged: each number is parsed once from the CSV text to float64 (as any reader would),
and after writing, every file is read back and compared with the CSVs column by column, exactly.
The CSVs' empty columns (quote_volume, trades, taker_buy_*: not in their freqtrade source) are left
out rather than filled; ingest.replay derives quote_volume = volume * close where it is absent.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import polars as pl

RECORDED = Path(__file__).resolve().parent / "recorded"

# (name in the repo, klines folder, funding folder) - the three real USD-M 1m sets
SETS = [("2025-05", "klines", "funding"),
        ("2025-02", "klines_more/2025-02_futures_ohlcv", "funding/2025-02"),
        ("2023-07", "klines_more/2023-07_futures_ohlcv", "funding/2023-07")]

KLINE_SCHEMA = {"open_time": pl.Int64, "open": pl.Float64, "high": pl.Float64, "low": pl.Float64,
                "close": pl.Float64, "volume": pl.Float64, "close_time": pl.Int64}
FUNDING_SCHEMA = {"funding_time": pl.Int64, "funding_rate": pl.Float64, "mark_price": pl.Float64}
MARK_SCHEMA = {"open_time": pl.Int64, "open": pl.Float64, "high": pl.Float64, "low": pl.Float64, "close": pl.Float64}


def _read(path: Path, schema: dict) -> pl.DataFrame:
    df = pl.read_csv(path, schema_overrides={k: v for k, v in schema.items()}, infer_schema_length=0)
    return df.select([pl.col(k).cast(v) for k, v in schema.items()])


def _frame(files: list[Path], suffix: str, schema: dict) -> pl.DataFrame:
    parts = []
    for f in files:
        sym = f.name.split("-")[0]
        parts.append(_read(f, schema).with_columns(pl.lit(sym).alias("symbol")).select(["symbol", *schema]))
    return pl.concat(parts).sort(["symbol", next(iter(schema))])


class PackError(RuntimeError):
    """A packed file did not read back equal to its frame (nothing of that batch was put in place)."""


def write_verified(frames: dict[Path, pl.DataFrame]) -> list[tuple[str, int, str]]:
    """Write each frame as zstd-19 Parquet, read every file back and compare it with its frame, and
    only then move them all into place: either every file of the batch is written, or none is (a
    failed comparison leaves the old files, if any, untouched). Returns (name, rows, sha256 prefix)."""
    temps = []
    try:
        for path, df in frames.items():
            tmp = path.with_name(path.name + ".tmp")
            temps.append(tmp)
            df.write_parquet(tmp, compression="zstd", compression_level=19, statistics=True)
            if not pl.read_parquet(tmp).equals(df):
                raise PackError(f"{path}: read back differs from the frame written")
        written = []
        for (path, df), tmp in zip(frames.items(), temps):
            digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:16]
            tmp.replace(path)
            written.append((path.name, df.height, digest))
        return written
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def pack(shared: Path, out: Path = RECORDED) -> list[tuple[str, int, str]]:
    written = []
    for name, kdir, fdir in SETS:
        kfiles = sorted((shared / kdir).glob("*-1m.csv*"))
        ffiles = sorted((shared / fdir).glob("*-funding.csv"))
        mfiles = sorted((shared / fdir).glob("*-mark-8h.csv"))
        if not kfiles or not ffiles:
            raise SystemExit(f"no klines or funding files under {shared / kdir} / {shared / fdir}")
        try:
            written += write_verified({out / f"{kind}_{name}.parquet": _frame(files, kind, schema)
                                       for kind, files, schema in (("perps_1m", kfiles, KLINE_SCHEMA),
                                                                   ("funding", ffiles, FUNDING_SCHEMA),
                                                                   ("mark_8h", mfiles, MARK_SCHEMA))})
        except PackError as exc:
            raise SystemExit(f"{exc} (the CSVs)") from None
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    for name, rows, digest in pack(Path(argv[0])):
        print(f"{name:32} {rows:>9,} rows  sha256 {digest}...")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
