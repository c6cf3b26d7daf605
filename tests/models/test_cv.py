"""Purged, embargoed, time-ordered CV: contiguous folds, no overlapping label windows, embargo honoured."""
from __future__ import annotations

import numpy as np
import pytest

from models.cv import overlaps, purged_splits, time_folds

H = 3_600_000


def _windows(n=600, seed=0):
    rng = np.random.default_rng(seed)
    t0 = np.sort(rng.integers(0, 2000, n)) * H                 # repeated timestamps (several symbols)
    t1 = t0 + rng.integers(1, 30, n) * H
    return t0, t1


def test_folds_are_contiguous_in_time_and_share_equal_timestamps():
    t0, _ = _windows()
    f = time_folds(t0, 5)
    assert set(f.tolist()) == set(range(5))
    assert np.all(np.diff(f[np.argsort(t0, kind="stable")]) >= 0)        # monotone in time
    for t in np.unique(t0):
        assert len(set(f[t0 == t].tolist())) == 1
    counts = np.bincount(f)
    assert counts.min() > 0.5 * len(t0) / 5


@pytest.mark.parametrize("embargo", [0, 24 * H])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_train_label_window_overlaps_the_test_fold(embargo, seed):
    t0, t1 = _windows(seed=seed)
    splits = purged_splits(t0, t1, 5, embargo)
    assert len(splits) == 5
    for tr, te in splits:
        assert overlaps(t0, t1, tr, te) == 0
        assert not set(tr.tolist()) & set(te.tolist())
        end = t1[te].max()
        assert not np.any((t0[tr] > end) & (t0[tr] <= end + embargo))   # embargo after the test fold


def test_overlap_detector_and_purge_actually_remove_samples():
    t0 = np.array([0, 10, 20, 30]) * H
    t1 = np.array([25, 15, 22, 40]) * H     # sample 0's window reaches into the later samples
    assert overlaps(t0, t1, np.array([0]), np.array([2])) == 1
    splits = purged_splits(t0, t1, 2, 0)
    tr, te = splits[1]                      # test = samples 2, 3 -> sample 0 (ends at 25 >= 20) purged
    assert te.tolist() == [2, 3] and tr.tolist() == [1]


def test_walk_forward_trains_only_on_the_past():
    t0, t1 = _windows()
    for tr, te in purged_splits(t0, t1, 5, 0, walk_forward=True):
        assert t1[tr].max() < t0[te].min()


def test_bad_inputs():
    with pytest.raises(ValueError):
        purged_splits(np.array([5]), np.array([1]), 2)
    with pytest.raises(ValueError):
        time_folds(np.array([1, 1, 1]), 2)
