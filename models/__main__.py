"""python -m models train | evaluate  (see models/README.md)."""
from __future__ import annotations

import argparse
import sys


def _files(arg: str) -> list[str]:
    return [f.strip() for f in arg.split(",") if f.strip()]


def main(argv: list[str] | None = None) -> int:
    from .train import DEFAULT_OOS, DEFAULT_TRAIN, _rel
    ap = argparse.ArgumentParser(prog="python -m models", description="SMC LightGBM confidence model")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="build the setups, purged CV in the training periods, calibrate, write "
                                      "<out>/lgbm_smc.{txt,json}, report out-of-sample with baselines")
    tr.add_argument("--interval", default="1m", choices=["1m", "5m", "15m", "1h"],
                    help="bar interval of the data (HTF = 5 x interval: 1m -> 5m)")
    tr.add_argument("--data", default=",".join(_rel(p) for p in DEFAULT_TRAIN),
                    help="comma-separated training kline parquets (default: USD-M perps 1m 2023-07, 2025-02)")
    tr.add_argument("--oos-data", default=",".join(_rel(p) for p in DEFAULT_OOS),
                    help="comma-separated out-of-sample kline parquets (default: USD-M perps 1m 2025-05)")
    tr.add_argument("--symbols", default="", help="comma-separated symbols (default: all in the files)")
    tr.add_argument("--seed", type=int, default=7)
    tr.add_argument("--max-rounds", type=int, default=300)
    tr.add_argument("--max-setups", type=int, default=0, help="seeded subsample of the training setups (0 = all)")
    tr.add_argument("--embargo-hours", type=float, default=6.0)
    tr.add_argument("--baseline-seeds", type=int, default=20)
    tr.add_argument("--out", default="models")
    tr.add_argument("--report", default="reports/model", help="out-of-sample report directory ('' = none)")
    ev = sub.add_parser("evaluate", help="re-run the out-of-sample report of a model (HTML + text + rich table)")
    ev.add_argument("--model", default="models/lgbm_smc.txt")
    ev.add_argument("--data", default="", help="comma-separated kline parquets (default: the model's out-of-sample files)")
    ev.add_argument("--baseline-seeds", type=int, default=20)
    ev.add_argument("--out", default="reports/model")
    a = ap.parse_args(argv)
    if a.cmd == "train":
        from .train import run_train
        run_train(_files(a.data), _files(a.oos_data), a.interval, a.seed, a.out, max_rounds=a.max_rounds,
                  max_setups=a.max_setups, symbols=_files(a.symbols) or None, embargo_hours=a.embargo_hours,
                  baseline_seeds=a.baseline_seeds, report_dir=a.report or None)
        return 0
    from .evaluate import run_evaluate
    run_evaluate(a.model, a.out, _files(a.data) or None, a.baseline_seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
