"""Every benchmark prints the machine's load average before and after it: a figure measured on a busy
machine says so next to itself (the README quotes these lines with the figures)."""
from __future__ import annotations

import os

import pytest


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


@pytest.fixture(autouse=True)
def _print_load_average(request):
    cores = os.cpu_count()
    print(f"\n[{request.node.name}] load average (1 / 5 / 15 min) before: {_load()} on {cores} cores", flush=True)
    yield
    print(f"[{request.node.name}] load average (1 / 5 / 15 min) after: {_load()} on {cores} cores", flush=True)
