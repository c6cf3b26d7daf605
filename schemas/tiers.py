"""The confidence tiers: one definition of their edges and names.

The product's rule (DESIGN.md "Risk and exits"): confidence strictly above 0.85, 0.70 or 0.60 picks a
risk tier, anything else is no trade. The executor pairs each edge with its risk fraction
(executor.risk.TIERS); the reports, the model's tier tables and the audit trail's views
(infra.analytics) group by the names below, so a record's tier reads the same everywhere.
"""
from __future__ import annotations

import math

TIER_EDGES: tuple[float, ...] = (0.85, 0.70, 0.60)     # strictly above; highest first


def tier_name(confidence: float, edges: tuple[float, ...] = TIER_EDGES) -> str:
    """">0.85", "0.70-0.85", "0.60-0.70" or "<=0.60" (strict >: exactly 0.85 is "0.70-0.85")."""
    for i, lo in enumerate(edges):
        if confidence > lo:
            return f">{lo:.2f}" if i == 0 else f"{lo:.2f}-{edges[i - 1]:.2f}"
    return f"<={edges[-1]:.2f}"


def tier_names(edges: tuple[float, ...] = TIER_EDGES) -> list[str]:
    """Every tier's name, highest first, the no-trade band last."""
    return [tier_name(math.inf, edges)] + [tier_name(lo, edges) for lo in edges]


def tier_intervals(edges: tuple[float, ...] = TIER_EDGES) -> list[tuple[str, float, float]]:
    """(name, lo, hi) per tier, highest first: confidence in (lo, hi]; the top tier's hi is +inf, the
    no-trade band is (-inf, lowest edge]."""
    names = tier_names(edges)
    uppers = (math.inf, *edges[:-1])
    return [(names[i], lo, uppers[i]) for i, lo in enumerate(edges)] + [(names[-1], -math.inf, edges[-1])]
