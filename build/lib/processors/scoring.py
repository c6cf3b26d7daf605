"""Confidence scorers: the LightGBM model at models/ when present, else the heuristic of the spec.

A model comes as two files: `<name>.txt` (LightGBM text model) and `<name>.json` (metadata: feature
names in order, version, calibration map). The metadata's feature names must equal the engine's
FEATURE_NAMES, in order: a mismatch is a clear startup error, never a silent mis-scoring.
Scoring is batched: LightGBM's per-call overhead makes one call per row ~25x the per-row cost of a batch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np

from processors.smc import FEATURE_NAMES, heuristic_confidence_vector

_IX = {n: i for i, n in enumerate(FEATURE_NAMES)}


class ModelMismatch(RuntimeError):
    pass


class Scorer(Protocol):
    version: str

    def score(self, features: np.ndarray) -> np.ndarray:
        """(n, 12) features in FEATURE_NAMES order -> (n,) calibrated probabilities in [0, 1]."""


class HeuristicScorer:
    version = "heuristic-v1"

    def score(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURE_NAMES))
        return heuristic_confidence_vector(f[:, _IX["market_structure"]], f[:, _IX["liquidity_grab"]],
                                           f[:, _IX["fvg_size_atr"]], f[:, _IX["ob_proximity"]],
                                           f[:, _IX["momentum_atr"]], f[:, _IX["rsi_14"]])


class LightGBMScorer:
    def __init__(self, model_path: str | Path) -> None:
        import lightgbm as lgb
        model_path = Path(model_path)
        meta_path = model_path.with_suffix(".json")
        if not meta_path.exists():
            raise ModelMismatch(f"model {model_path} has no metadata file {meta_path}")
        meta = json.loads(meta_path.read_text())
        names = list(meta.get("feature_names", []))
        if names != list(FEATURE_NAMES):
            raise ModelMismatch(
                f"model {model_path} was trained on features {names}, the engine computes {list(FEATURE_NAMES)}; "
                "retrain it (smc train) or remove it to use the heuristic")
        self.booster = lgb.Booster(model_file=str(model_path))
        if self.booster.num_feature() != len(FEATURE_NAMES):
            raise ModelMismatch(f"model {model_path} expects {self.booster.num_feature()} features, not {len(FEATURE_NAMES)}")
        cal = meta.get("calibration") or {}
        self._cal_x = np.asarray(cal.get("x", []), dtype=np.float64)
        self._cal_y = np.asarray(cal.get("y", []), dtype=np.float64)
        self.version = str(meta.get("version") or meta.get("content_hash", "lgbm"))[:40]
        self.meta = meta

    def raw(self, features: np.ndarray) -> np.ndarray:
        return self.booster.predict(np.ascontiguousarray(features, dtype=np.float64), num_threads=1)

    def score(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros(0)
        p = self.raw(features)
        if self._cal_x.size:
            p = np.interp(p, self._cal_x, self._cal_y)
        return np.clip(p, 0.0, 1.0)


def load_scorer(model_path: str | Path | None) -> Scorer:
    """The LightGBM model when its file exists, the heuristic otherwise (model_path "" = heuristic)."""
    if model_path and Path(model_path).exists():
        return LightGBMScorer(model_path)
    return HeuristicScorer()
