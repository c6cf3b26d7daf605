"""Shared, session-cached slices of the recorded data for the model tests (kept small: < 60 s in all)."""
from __future__ import annotations

import polars as pl
import pytest

from models.dataset import FULL_1H, build_dataset, load_klines, smc_config


@pytest.fixture(scope="session")
def majors_klines() -> pl.DataFrame:
    return load_klines(FULL_1H, ["BTCUSDT", "ETHUSDT", "SOLUSDT"])


@pytest.fixture(scope="session")
def small_dataset(majors_klines) -> pl.DataFrame:
    """Labelled setups of 3 majors over ~4 years (~9k rows)."""
    return build_dataset(majors_klines, smc_config(), source="test")
