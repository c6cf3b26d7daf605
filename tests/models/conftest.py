"""Shared, session-cached slices of the recorded USD-M 1m perps for the model tests (kept small)."""
from __future__ import annotations

import polars as pl
import pytest

from models.dataset import PERPS_1M, build_dataset, load_klines, smc_config
from models.labels import LabelConfig
from models.train import funding_for

MIN = 60_000


@pytest.fixture(scope="session")
def majors_klines() -> pl.DataFrame:
    """ETH, SOL, XRP 1m perps, 2025-02 (30 days)."""
    return load_klines(PERPS_1M["2025-02"], ["ETHUSDT", "SOLUSDT", "XRPUSDT"])


@pytest.fixture(scope="session")
def small_dataset(majors_klines) -> pl.DataFrame:
    """Labelled setups of 3 perps over 30 days of 1m bars (~11k rows), real funding."""
    funding, _ = funding_for([PERPS_1M["2025-02"]])
    return build_dataset(majors_klines, smc_config(MIN, 5), LabelConfig(), source="test", funding=funding)
