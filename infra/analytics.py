"""Analytics views shipped with the audit trail. Every view reads with FINAL (no duplicates)."""
from schemas.tiers import TIER_EDGES, tier_names


def tier_sql(column: str = "confidence") -> str:
    """schemas.tiers.tier_name as a ClickHouse expression: the same edges and names."""
    names = tier_names()
    parts = ", ".join(f"{column} > {lo!r}, '{names[i]}'" for i, lo in enumerate(TIER_EDGES))
    return f"multiIf({parts}, '{names[-1]}')"


VIEWS: dict[str, str] = {
    # Closed trades with their confidence tier.
    "trades": """
        SELECT position_id, signal_id, symbol, side, qty, entry_price, exit_price, exit_reason,
               opened_at, closed_at, realized_pnl, fees, funding, confidence, pattern,
               """ + tier_sql() + """ AS tier,
               (closed_at - opened_at) / 60000 AS minutes_held
        FROM {db}.positions FINAL WHERE status = 'closed'""",
    "pnl_by_symbol": """
        SELECT symbol, count() AS trades, round(sum(realized_pnl), 4) AS pnl, round(avg(realized_pnl > 0), 4) AS win_rate,
               round(sum(fees), 4) AS fees, round(sum(funding), 4) AS funding
        FROM {db}.trades GROUP BY symbol ORDER BY pnl DESC""",
    "pnl_by_pattern": """
        SELECT pattern, count() AS trades, round(sum(realized_pnl), 4) AS pnl, round(avg(realized_pnl > 0), 4) AS win_rate
        FROM {db}.trades GROUP BY pattern ORDER BY pnl DESC""",
    "pnl_by_tier": """
        SELECT tier, count() AS trades, round(sum(realized_pnl), 4) AS pnl, round(avg(realized_pnl > 0), 4) AS hit_rate,
               round(avg(confidence), 4) AS mean_confidence
        FROM {db}.trades GROUP BY tier ORDER BY tier""",
    # Calibration: does a 0.8 confidence win 80% of the time?
    "calibration": """
        SELECT floor(confidence * 10) / 10 AS confidence_bucket, count() AS trades,
               round(avg(confidence), 4) AS mean_confidence, round(avg(realized_pnl > 0), 4) AS hit_rate
        FROM {db}.trades GROUP BY confidence_bucket ORDER BY confidence_bucket""",
    # Latency from kline close to the entry order (wall clock; meaningful for live data).
    "latency": """
        SELECT o.symbol AS symbol, count() AS orders,
               quantileExact(0.5)(o.wall_ts - s.close_time) AS p50_ms,
               quantileExact(0.99)(o.wall_ts - s.close_time) AS p99_ms
        FROM {db}.orders AS o FINAL INNER JOIN {db}.signals AS s FINAL ON o.signal_id = s.signal_id
        WHERE o.leg = 'entry' AND o.status = 'NEW' GROUP BY symbol ORDER BY orders DESC""",
    "rejects_by_reason": """
        SELECT stage, splitByString(': ', reason)[1] AS field, any(reason) AS example, count() AS rejects
        FROM {db}.rejects FINAL GROUP BY stage, field ORDER BY rejects DESC""",
}
