"""Looking inside a live worker: `kill -USR1 <pid>` logs where every coroutine waits.

A suspended asyncio task's own stack shows one frame; what matters is the chain of awaits below it, and
async generators (Faust's streams are async generators) are only reachable through the garbage
collector. This is how the take-over stall fixed by processors/faust_guards.py was found.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
import types

log = logging.getLogger("smc.processors.diagnostics")


def _frame(obj):
    return getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None) or getattr(obj, "gi_frame", None)


def _awaited(obj):
    return getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None) or getattr(obj, "gi_yieldfrom", None)


def await_chain(obj) -> str:
    parts = []
    while obj is not None:
        frame = _frame(obj)
        parts.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})" if frame
                     else repr(obj)[:100])
        obj = _awaited(obj)
    return "\n    -> ".join(parts)


def dump_waits() -> None:
    for task in asyncio.all_tasks():
        log.warning("task %s\n    %s", task.get_name(), await_chain(task.get_coro()))
    for obj in gc.get_objects():
        if isinstance(obj, types.AsyncGeneratorType) and obj.ag_frame is not None:
            log.warning("async generator\n    %s", await_chain(obj))


def install_sigusr1_dump(loop: asyncio.AbstractEventLoop) -> None:
    loop.add_signal_handler(signal.SIGUSR1, dump_waits)
