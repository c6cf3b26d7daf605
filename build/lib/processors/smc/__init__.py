"""SMC geometry engine and features (pure, no I/O). See README.md for definitions and semantics."""
from .bars import BadBar, Bar
from .batch import compute_batch, compute_batch_all
from .config import SmcConfig
from .engine import BarOutput, SmcEngine, timeframe_label
from .features import FEATURE_NAMES, features_scalar, features_vector
from .heuristic import heuristic_confidence, heuristic_confidence_vector
from .htf import HtfAggregator, SymbolState
from .setup import Setup

__all__ = ["BadBar", "Bar", "BarOutput", "FEATURE_NAMES", "HtfAggregator", "Setup", "SmcConfig", "SmcEngine",
           "SymbolState", "compute_batch", "compute_batch_all", "features_scalar", "features_vector",
           "heuristic_confidence", "heuristic_confidence_vector", "timeframe_label"]
