"""`ReadyBatches`: batches of the events that are ready now; the caller acks each batch when it is done.

Why not faust's `Stream.take_events(max_, within)`:
  * it waits for a full buffer or the `within` timer, so a lone live kline waits the whole timer
    (latency) while a smaller timer cuts throughput batches short;
  * it acks a batch when the loop body comes back, and in a `finally`: a batch whose processing raised
    or was cancelled (SIGTERM mid-batch) counts as done and its offsets get committed, so those klines
    would never be processed; and a caller cannot keep a batch open while it starts the next one.

`ReadyBatches` yields as soon as at least one event is buffered, after letting the stream move what
is already queued into the batch (natural batching: a burst becomes one batch, a lone kline goes
alone, a backlog comes in batches of `max_`). Nothing is acked until the caller calls `ack(batch)`:
events of a batch that failed or was cancelled stay unacked, the consumer does not commit them, and
they are delivered again after the restart (the processors dedupe re-delivered bars). `waiting` says
how many events are buffered for the next batch, so a caller can decide whether to finish the current
one now or overlap it with the next.
Structure follows faust 0.15's take_events (a buffering processor on a passively drained stream);
processors/faust_guards.check_compatible() checks the internals used here.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Sequence

from faust.types import EventT, StreamT


class ReadyBatches:
    def __init__(self, stream: StreamT, max_: int) -> None:
        if max_ < 1:
            raise ValueError(f"ReadyBatches: max_={max_!r} must be >= 1")
        self.stream = stream
        self.max = max_
        self._events: list[EventT] = []
        self._agen: AsyncIterator[list[EventT]] | None = None

    @property
    def waiting(self) -> int:
        """Events buffered for the next batch. Not the channel's queue: during a rebalance Faust's flow
        control stops the drainer, and a caller that kept its batches unacked until queued events
        arrive would hold back the acks the rebalance waits for."""
        return len(self._events)

    async def ack(self, batch: Sequence[EventT]) -> None:
        """The batch is fully processed: its offsets may be committed."""
        for event in batch:
            await self.stream.ack(event)

    def __aiter__(self) -> AsyncIterator[list[EventT]]:
        if self._agen is None:
            self._agen = self._batches()
            # faust closes tracked buffering generators when the stream stops (as for its own take_*)
            self.stream._active_agens.add(self._agen)  # type: ignore[attr-defined]
        return self._agen

    async def _batches(self) -> AsyncIterator[list[EventT]]:
        stream: Any = self.stream
        events = self._events
        max_ = self.max
        ready = asyncio.Event()     # at least one event is buffered
        room = asyncio.Event()      # the buffer is below max_ (back-pressure on the drainer)
        room.set()
        queue = stream.channel.queue

        async def add_to_buffer(value: Any) -> Any:
            event = stream.current_event
            if event is None:
                raise RuntimeError("ReadyBatches: the stream has no current event")
            events.append(event)
            ready.set()
            if len(events) >= max_:
                room.clear()
                await stream.wait(room)
            return value

        enable_acks = stream.enable_acks
        stream.enable_acks = False          # the caller acks, after the batch was processed
        stream.add_processor(add_to_buffer)
        stream._enable_passive(aiter(stream.channel))
        try:
            while not stream.should_stop:
                if not events:
                    # a bare Event wait: Service.wait_for_stopped() costs ~0.1 ms of task set-up per call,
                    # more than a small batch's processing; stopping cancels the agent's task, which ends it
                    await ready.wait()
                # Let the drainer move what is already queued into this batch; bounded, so a drainer
                # that cannot progress (flow control during a rebalance) never makes this spin.
                for _ in range(max_):
                    if len(events) >= max_ or not queue.qsize():
                        break
                    await asyncio.sleep(0)
                batch = events[:]
                events.clear()
                ready.clear()
                room.set()
                yield batch
        finally:
            stream.enable_acks = enable_acks
            stream._processors.remove(add_to_buffer)
