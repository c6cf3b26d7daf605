"""Session-cached real data for the SMC tests."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("SMC_CREDIT", "0")

import smc_testutil as U  # noqa: E402


@pytest.fixture(scope="session")
def btc_1m():
    return U.load_btc_1m()


@pytest.fixture(scope="session")
def klines_1h():
    return U.load_1h()


@pytest.fixture(scope="session")
def eurusd():
    return U.load_eurusd()


@pytest.fixture(scope="session")
def perps_1m():
    return U.load_perps_1m()
