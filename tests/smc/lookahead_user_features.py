"""User features for the lookahead-check tests (`--feature lookahead_user_features:NAME`)."""
import polars as pl


def causal_range(bars: pl.DataFrame):
    """High - low of the bar and a 5-bar rolling mean of the close: only bars <= t."""
    return bars.select((pl.col("high") - pl.col("low")).alias("range"),
                       pl.col("close").rolling_mean(5).alias("close_mean_5"))


def next_close(bars: pl.DataFrame):
    """Deliberate lookahead: the next bar's close (null on the last bar)."""
    return bars["close"].shift(-1)
