"""Time-ordered, purged and embargoed cross-validation (pure functions, no shuffling across time).

Every sample i has a label window [t0_i, t1_i] (signal bar open .. exit fill). Folds are contiguous
blocks of time (a timestamp never straddles two folds, so simultaneous setups of different symbols
share a fold). For test fold k with span [a, b] = [min t0, max t1] of its samples, a train sample j
is kept only if its window does not touch the span widened by the embargo after it:

    purge/embargo:  drop j if t1_j >= a and t0_j <= b + embargo

i.e. no train label window overlaps any test label window (purging), and no train sample starts within
`embargo` after the test fold's last label ends (embargo: serial correlation of features / regimes).
Purging is across all symbols (crypto majors move together). `walk_forward=True` additionally keeps
only train samples that end before the test fold starts (expanding window).
"""
from __future__ import annotations

import numpy as np


def time_folds(t0: np.ndarray, n_splits: int) -> np.ndarray:
    """Fold id (0..n_splits-1) per sample: contiguous time blocks of ~equal sample counts; equal
    timestamps always share a fold."""
    t0 = np.asarray(t0, dtype=np.int64)
    if n_splits < 2:
        raise ValueError("n_splits must be >= 2")
    uniq, counts = np.unique(t0, return_counts=True)
    if len(uniq) < n_splits:
        raise ValueError(f"{len(uniq)} distinct times cannot make {n_splits} folds")
    cum = np.cumsum(counts)
    edges = np.searchsorted(cum, np.arange(1, n_splits) * len(t0) / n_splits, side="left")
    edges = np.maximum.accumulate(np.clip(edges, 0, len(uniq) - 1))
    fold_of_time = np.searchsorted(edges, np.arange(len(uniq)), side="left")
    # fold k holds unique times with index in (edges[k-1], edges[k]]
    fold_of_time = np.minimum(fold_of_time, n_splits - 1)
    return fold_of_time[np.searchsorted(uniq, t0)]


def purged_splits(t0: np.ndarray, t1: np.ndarray, n_splits: int = 5, embargo_ms: int = 0,
                  walk_forward: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(train_idx, test_idx)] for each fold (folds in time order; empty train folds are skipped)."""
    t0 = np.asarray(t0, dtype=np.int64)
    t1 = np.asarray(t1, dtype=np.int64)
    if np.any(t1 < t0):
        raise ValueError("label end t1 before t0")
    fold = time_folds(t0, n_splits)
    out = []
    for k in range(n_splits):
        test = np.flatnonzero(fold == k)
        if test.size == 0:
            continue
        a, b = int(t0[test].min()), int(t1[test].max())
        keep = (fold != k) & ~((t1 >= a) & (t0 <= b + embargo_ms))
        if walk_forward:
            keep &= t1 < a
        train = np.flatnonzero(keep)
        if train.size == 0:
            continue
        out.append((train, test))
    return out


def overlaps(t0: np.ndarray, t1: np.ndarray, train: np.ndarray, test: np.ndarray) -> int:
    """Number of (train, test) pairs whose closed label windows intersect (brute force, for checks)."""
    a0, a1 = t0[train][:, None], t1[train][:, None]
    b0, b1 = t0[test][None, :], t1[test][None, :]
    return int(np.count_nonzero((a0 <= b1) & (b0 <= a1)))
