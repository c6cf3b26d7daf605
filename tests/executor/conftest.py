"""Executor test fixtures.

tests/executor has no __init__.py, so pytest puts tests/ on sys.path, where this directory would
shadow the real `executor` package as a namespace package. Put the repo root first (the lead may
instead set `pythonpath = ["."]` in pyproject's pytest options).
"""
from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)
_mod = sys.modules.get("executor")
if _mod is not None and getattr(_mod, "__file__", None) is None:   # a namespace shadow: drop it
    for _name in [n for n in sys.modules if n == "executor" or n.startswith("executor.")]:
        del sys.modules[_name]
