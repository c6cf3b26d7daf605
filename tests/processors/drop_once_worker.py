"""`python -m processors worker` with one record taken away from the agent once, as faust-streaming 0.15
does when a rebalance suspends the flow while the record is being delivered (processors/faust_guards.py).

SMC_TEST_DROP_ONCE=<partition>:<offset>: the first time that record reaches the agent's batches it is
acked and withheld (acked: the commit may even pass it, as Faust's skip-and-ack did); its successors
go on. The offset gate must hold them back, seek the partition back and give the state the record.
Test-only: the production worker has no such hook.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from processors import faust_batches  # noqa: E402

TARGET = tuple(int(x) for x in os.environ["SMC_TEST_DROP_ONCE"].split(":"))
_batches = faust_batches.ReadyBatches._batches


async def _dropping(self):
    dropped = False
    async for batch in _batches(self):
        if not dropped:
            gone = [e for e in batch if (e.message.partition, e.message.offset) == TARGET]
            if gone:
                dropped = True
                for e in gone:
                    await self.stream.ack(e)
                print(f"drop_once_worker: withheld klines record {TARGET}", file=sys.stderr, flush=True)
                batch = [e for e in batch if e not in gone]
                if not batch:
                    continue
        yield batch


faust_batches.ReadyBatches._batches = _dropping

if __name__ == "__main__":
    from processors.__main__ import main
    sys.exit(main(["worker", "--loglevel", "warning"]))
