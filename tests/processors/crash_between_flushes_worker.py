"""`python -m processors worker` that dies (os._exit, as fail_loud does) between the two flushes of a
group commit: the group's signals and windows are acknowledged, its states and offset markers never
leave. The window table is then ahead of the state table, the case a restart must get right.

SMC_TEST_CRASH_AT=<total>:<group>: die at the first state write of a group that produced at least <group>
signals, once <total> signals are out and an earlier group has written its states (a large group: its windows run more than HTF_KEEP ahead of the stored states). Unset: no crash.
SMC_TEST_SWEEP_MIN=<n>: the windowed table is swept from n windows on (processors.app.SWEEP_MIN), and
SMC_TEST_GROUP_MAX=<n>: a group (and a batch) commits after n klines (processors.app.GROUP_MAX, BATCH_MAX): so the restarted
worker sweeps at its first commits, while the windows are still ahead and before it has loaded the
state of every symbol (a busy machine does the same with small first groups).
Test-only: the production worker has no such hooks.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from processors import app, delivery  # noqa: E402

CRASH_TOTAL, CRASH_GROUP = (int(x) for x in (os.environ.get("SMC_TEST_CRASH_AT") or "0:0").split(":"))
app.SWEEP_MIN = int(os.environ.get("SMC_TEST_SWEEP_MIN") or app.SWEEP_MIN)
app.GROUP_MAX = int(os.environ.get("SMC_TEST_GROUP_MAX") or app.GROUP_MAX)
app.BATCH_MAX = min(app.BATCH_MAX, app.GROUP_MAX)
CRASH_EXIT = 71

if CRASH_GROUP:
    _produce = delivery.BatchDelivery.produce
    group = {"signals": 0, "total": 0, "stored": 0}   # signals since the last states, in all; groups stored

    def produce(self, topic, key, value, partition=-1):
        if topic.rsplit(".", 1)[-1] == "signals":
            group["signals"] += 1
            group["total"] += 1
        elif topic.endswith("symbol-state-changelog"):
            # a state to restart from exists, the partitions have all been under way, the group is large
            if group["stored"] and group["total"] >= CRASH_TOTAL and group["signals"] >= CRASH_GROUP:
                print(f"crash_between_flushes_worker: dying before the states of a group of "
                      f"{group['signals']} signals", file=sys.stderr, flush=True)
                os._exit(CRASH_EXIT)
            if group["signals"]:
                group["stored"] += 1
            group["signals"] = 0
        return _produce(self, topic, key, value, partition)

    delivery.BatchDelivery.produce = produce

if __name__ == "__main__":
    from processors.__main__ import main
    sys.exit(main(["worker", "--loglevel", "warning"]))
