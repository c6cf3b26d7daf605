"""The shipped USD-M perpetual 1m data (ingest/recorded/perps_1m_*.parquet, funding_*, mark_8h_*):
equal to the shared CSVs it was packed from (when ../shared/data is beside the repo), complete per
the manifest, and valid bars that the replay reads as 1m klines."""
from __future__ import annotations

import csv

import polars as pl
import pytest

from conftest import RECORDED, SHARED_DATA
from ingest.pack_recorded import SETS
from ingest.replay import load_klines

STEP = 60_000


@pytest.mark.parametrize("name", [s[0] for s in SETS])
def test_perps_1m_are_contiguous_valid_bars(name):
    df = pl.read_parquet(RECORDED / f"perps_1m_{name}.parquet")
    assert df.columns == ["symbol", "open_time", "open", "high", "low", "close", "volume", "close_time"]
    per = df.group_by("symbol").agg(
        gaps=(pl.col("open_time").diff().drop_nulls() != STEP).sum(),
        bad_close=(pl.col("close_time") != pl.col("open_time") + STEP - 1).sum(),
        bad_hl=((pl.col("high") < pl.max_horizontal("open", "close"))
                | (pl.col("low") > pl.min_horizontal("open", "close")) | (pl.col("volume") < 0)).sum())
    assert per.height == {"2025-05": 18, "2025-02": 8, "2023-07": 18}[name]
    assert per["gaps"].sum() == 0 and per["bad_close"].sum() == 0 and per["bad_hl"].sum() == 0
    funding = pl.read_parquet(RECORDED / f"funding_{name}.parquet")
    assert set(funding["symbol"]) == set(per["symbol"])
    assert funding["funding_rate"].abs().max() <= 0.03


def test_replay_reads_the_perps_as_1m_klines():
    df = load_klines([RECORDED / "perps_1m_2025-05.parquet"], ["BTCUSDT", "ETHUSDT"],
                     "2025-05-20", "2025-05-20T01:00")
    assert df.height == 120 and sorted(set(df["symbol"])) == ["BTCUSDT", "ETHUSDT"]


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside this clone")
def test_shipped_perps_equal_the_shared_csvs_and_manifest():
    rows = {}
    with open(SHARED_DATA / "klines_manifest.csv") as fh:
        for r in csv.DictReader(fh):
            rows[r["file"]] = r
    for name, kdir, _ in SETS:
        df = pl.read_parquet(RECORDED / f"perps_1m_{name}.parquet")
        for (sym,), part in df.group_by(["symbol"]):
            entry = next(r for f, r in rows.items() if f.startswith(kdir + "/") and r["symbol"] == sym)
            assert entry["market"] == "binance_usdm_perpetual"
            assert part.height == int(entry["rows"])
            assert part["open_time"].min() == int(entry["first_open_time"])
            assert part["open_time"].max() == int(entry["last_open_time"])
        src = sorted((SHARED_DATA / kdir).glob("ETHUSDT-1m.csv*"))[0]
        raw = pl.read_csv(src, infer_schema_length=0)
        btc = df.filter(pl.col("symbol") == "ETHUSDT")
        for col in ("open", "high", "low", "close", "volume"):
            assert btc[col].to_list() == [float(x) for x in raw[col].to_list()], col
