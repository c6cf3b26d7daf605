"""python -m models train | evaluate  (see models/README.md)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from .dataset import FULL_1H, WIDE_1H
    ap = argparse.ArgumentParser(prog="python -m models", description="SMC LightGBM confidence model")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="build the dataset, purged CV, calibrate, write <out>/lgbm_smc.{txt,json}")
    tr.add_argument("--data", default=str(FULL_1H), help="training klines parquet (default: klines_1h_full)")
    tr.add_argument("--holdout-data", default=str(WIDE_1H),
                    help="out-of-sample klines file; its last bar also sets the holdout end ('' = none)")
    tr.add_argument("--symbols", default="", help="comma-separated training symbols (default: all in --data)")
    tr.add_argument("--holdout-days", type=float, default=120.0)
    tr.add_argument("--seed", type=int, default=7)
    tr.add_argument("--horizon", type=int, default=24, help="time-out in bars")
    tr.add_argument("--max-rounds", type=int, default=300)
    tr.add_argument("--out", default="models")
    ev = sub.add_parser("evaluate", help="out-of-sample report vs the heuristic (HTML + text + rich table)")
    ev.add_argument("--model", default="models/lgbm_smc.txt")
    ev.add_argument("--data", default=None, help="majors file (default: the model's training file)")
    ev.add_argument("--holdout-data", default=None, help="wide file (default: the model's holdout file)")
    ev.add_argument("--out", default="reports/model")
    a = ap.parse_args(argv)
    if a.cmd == "train":
        from .labels import LabelConfig
        from .train import run_train
        syms = [s.strip() for s in a.symbols.split(",") if s.strip()] or None
        run_train(a.data, syms, a.holdout_days, a.holdout_data or None, a.seed, a.out,
                  LabelConfig(horizon=a.horizon), max_rounds=a.max_rounds)
        return 0
    from .evaluate import run_evaluate
    run_evaluate(a.model, a.out, a.data, a.holdout_data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
