"""Liveness and readiness verdicts of a long-running process, as its /health and /ready endpoints answer.

Pure: a verdict is computed from figures and a clock handed in; the HTTP side is infra.metrics.
A verdict is a `Probe`: ok (200) or not (503), and a JSON-able body with the reason and the figures
it used, so whoever reads a 503 sees why without opening the process's log.

Liveness is a heartbeat that the process's own loop beats (the worker's stats timer, the executor's
consumer loop): a thread serving HTTP next to a dead or stuck loop must not answer "alive".
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Probe:
    ok: bool
    body: dict


@dataclass
class Heartbeat:
    """The last time the process's loop went round (time.monotonic); before the first round, the time it
    was made (the process's start)."""
    clock: Callable[[], float] = time.monotonic
    at: float = field(default=0.0)
    beats: int = 0          # how many times the loop went round (0: it has not reached its loop yet)

    def __post_init__(self) -> None:
        self.at = self.clock()

    def beat(self) -> None:
        self.at = self.clock()
        self.beats += 1

    def age_s(self) -> float:
        return max(0.0, self.clock() - self.at)


def liveness(beat: Heartbeat, max_age_s: float, startup_s: float) -> Probe:
    """Alive while the loop went round within max_age_s; before its first round, for startup_s from the
    start (the processors worker's timers only run once its tables are recovered, which takes a while)."""
    age = beat.age_s()
    if beat.beats:
        alive = age <= max_age_s
        reason = "loop running" if alive else f"loop has not gone round for {age:.0f} s"
    else:
        alive = age <= startup_s
        reason = f"starting: loop not reached yet after {age:.0f} s" + ("" if alive else " (stuck in start-up)")
    return Probe(alive, {"alive": alive, "reason": reason, "beats": beat.beats, "beat_age_s": round(age, 3),
                         "max_age_s": max_age_s, "startup_s": startup_s})
