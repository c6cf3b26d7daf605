"""Evaluation report: executor tier boundaries, reliability, HTML/text outputs (small slice)."""
from __future__ import annotations

import json

import numpy as np

from models.evaluate import evaluate_sets, reliability, tier_table, write_report
from processors.scoring import LightGBMScorer
from models.dataset import REPO

MODEL = REPO / "models" / "lgbm_smc.txt"


def test_tiers_follow_the_executor_strict_boundaries():
    p = np.array([0.60, 0.6000001, 0.70, 0.85, 0.851, 0.2])
    y = np.array([0, 1, 1, 0, 1, 0])
    r = np.array([-1.0, 2.0, 2.0, -1.0, 2.0, -1.0])
    rows = {t["tier"]: t for t in tier_table(p, y, r)}
    assert rows[">0.85"]["n"] == 1 and rows["0.70-0.85"]["n"] == 1
    assert rows["0.60-0.70"]["n"] == 2 and rows["<=0.60"]["n"] == 2
    assert rows["0.60-0.70"]["mean_r"] == 2.0 and rows["<=0.60"]["hit_rate"] == 0.0


def test_reliability_bins_cover_all_rows():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.3, 0.5, 1000)
    y = (rng.uniform(size=1000) < p).astype(int)
    rel = reliability(p, y, 10)
    assert sum(b["n"] for b in rel) == 1000 and len(rel) == 10
    assert all(b["lo"] <= b["mean_pred"] <= b["hi"] for b in rel)


def test_report_files(small_dataset, tmp_path):
    sc = LightGBMScorer(MODEL)
    res = evaluate_sets(sc, {"slice": small_dataset.tail(2000)}, 0.41)
    e = res["slice"]
    assert 0 <= e["model"]["auc"] <= 1 and e["model"]["score_max"] <= 1 and e["heuristic"]["n"] == 2000
    page = write_report(res, sc.meta, tmp_path)
    html = page.read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "AUC" in (tmp_path / "summary.txt").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["sets"]["slice"]["n"] == 2000
