"""The commit rule and the read-offset map of processors/faust_guards.py, in isolation.

The stale read offset they guard against showed up in tests/processors/test_worker.py's rebalance-churn
scenario (test_take_over_in_the_middle_of_rebalances), traced with DEVLOG=1 worker logs.
"""
from __future__ import annotations

import faust
import pytest

from processors import faust_guards
from processors.faust_guards import _NoDropReadOffsets, contiguous_commit_offset


@pytest.mark.parametrize("acked, committed, want", [
    ([], 10, (None, 0)),
    ([10, 11, 12], 10, (13, 3)),
    ([10, 11, 13, 14], 10, (12, 2)),          # stops at the first hole
    ([11, 12], 10, (None, 0)),                # 10 was never acked: faust 0.15 committed 13 here (off by one)
    ([1832, 1833], 1333, (None, 0)),          # the take-over loss: acked far past the committed offset
    ([0, 1, 2], None, (3, 3)),                # nothing committed yet: the first run counts
    ([7], 7, (8, 1)),
])
def test_commit_covers_only_a_contiguous_run_from_the_committed_offset(acked, committed, want):
    assert contiguous_commit_offset(acked, committed) == want


def test_read_offsets_are_recorded_but_never_filter():
    offsets = _NoDropReadOffsets()
    offsets["tp"] = 1831                     # Faust still writes it (seek, drain loop)
    assert offsets["tp"] is None              # ... but the drain loop's lookup never drops a record
    assert offsets.pop("tp", None) == 1831    # revocation cleanup keeps working
    offsets.update({"tp": 5})
    assert "tp" in offsets.keys()


def test_install_patches_the_consumer_once_and_knows_the_version():
    from faust.transport.consumer import Consumer
    faust_guards.install()
    faust_guards.install()
    assert Consumer._new_offset is faust_guards._new_offset
    assert faust.__version__.startswith(faust_guards.KNOWN_VERSIONS)
