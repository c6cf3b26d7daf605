"""The overfitting statistics on data whose answer is known: noise-only trials overfit about half the time
(PBO ~ 0.5), a configuration with a real edge is found out of sample (PBO ~ 0), the deflated Sharpe falls as
the number of trials grows, and PSR follows its closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from infra.overfit import deflated_sharpe, expected_max_sharpe, pbo_cscv, probabilistic_sharpe, sharpe


def test_pbo_of_pure_noise_is_about_one_half():
    rng = np.random.default_rng(3)
    pbos = [pbo_cscv(rng.standard_normal((400, 50)), blocks=10)[0] for _ in range(8)]
    assert 0.35 < float(np.mean(pbos)) < 0.65, pbos


def test_pbo_with_a_real_edge_is_near_zero():
    rng = np.random.default_rng(4)
    m = rng.standard_normal((400, 50))
    m[:, 17] += 0.4                       # one configuration with a persistent edge
    pbo, logits = pbo_cscv(m, blocks=10)
    assert pbo < 0.05 and len(logits) == math.comb(10, 5)


def test_psr_closed_form_for_normal_returns():
    rng = np.random.default_rng(5)
    r = rng.normal(0.05, 1.0, 2000)
    sr = sharpe(r)
    g3, g4 = stats.skew(r), stats.kurtosis(r, fisher=False)
    want = stats.norm.cdf(sr * math.sqrt(len(r) - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr * sr))
    assert probabilistic_sharpe(r) == pytest.approx(want, rel=1e-12)
    assert probabilistic_sharpe(r, sr) == pytest.approx(0.5, abs=1e-12)


def test_deflated_sharpe_falls_with_more_trials():
    rng = np.random.default_rng(6)
    best = rng.normal(0.08, 1.0, 500)
    dsr = [deflated_sharpe(best, rng.normal(0, 0.05, n)) for n in (2, 10, 100, 1000)]
    assert all(a > b for a, b in zip(dsr, dsr[1:])), dsr
    assert expected_max_sharpe(np.array([0.1])) == 0.0


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="blocks"):
        pbo_cscv(np.zeros((10, 3)), blocks=3)
    with pytest.raises(ValueError, match="configurations"):
        pbo_cscv(np.zeros((10, 1)))
