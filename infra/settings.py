"""Settings: environment variables (SMC_*), then an optional TOML file, then documented defaults.

Secrets (Binance API key/secret) are read from the environment only, never from the file, and never
appear in repr() or logs.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "127.0.0.1:9092"      # SMC_KAFKA_BOOTSTRAP
    namespace: str = ""                          # SMC_NAMESPACE: topic/group prefix of an isolated run
    partitions: int = 6                          # SMC_PARTITIONS
    clickhouse_dsn: str = f"chdb://{REPO_ROOT / 'var' / 'chdb'}"  # SMC_CLICKHOUSE_DSN (chdb:///path or http://host:8123)
    data_dir: str = str(REPO_ROOT / "var")      # SMC_DATA_DIR: Faust tables, broker data, reports
    interval: str = "1m"                         # SMC_INTERVAL: base kline interval
    replay_end: int = 0                          # SMC_REPLAY_END: a replay's declared end (ms, exclusive); 0 = live (wall clock bounds open_time)
    universe: str = ""                           # SMC_UNIVERSE: comma-separated symbols the processors accept ("" = any: live, where ingest vets the exchangeInfo universe)
    htf_factor: int = 5                          # SMC_HTF_FACTOR: higher timeframe = factor x interval
    model_path: str = str(REPO_ROOT / "models" / "lgbm_smc.txt")  # SMC_MODEL_PATH ("" = heuristic)
    strategy_version: str = "smc-v1"             # SMC_STRATEGY_VERSION: part of every signal_id
    binance_rest_url: str = "https://fapi.binance.com"             # SMC_BINANCE_REST_URL
    binance_ws_url: str = "wss://fstream.binance.com/market"       # SMC_BINANCE_WS_URL (klines live under /market)
    binance_trade_url: str = "https://testnet.binancefuture.com"   # SMC_BINANCE_TRADE_URL (testnet unless live)
    binance_user_ws_url: str = ""                # SMC_BINANCE_USER_WS_URL: the user data stream ("" = the trade URL's: testnet or live)
    binance_timeout_s: float = 3.0               # SMC_BINANCE_TIMEOUT_S: REST client timeout; no answer in time = outcome unknown
    binance_recv_window_ms: int = 2500           # SMC_BINANCE_RECV_WINDOW_MS: Binance refuses a request arriving later than timestamp + this (<= 60000)
    user_stream: bool = True                     # SMC_USER_STREAM=0: no user data stream (fills/triggers by polling only)
    user_stream_keepalive_s: float = 1800.0      # SMC_USER_STREAM_KEEPALIVE_S: listenKey keepalive interval (valid 60 min)
    live_trading: bool = False                   # SMC_LIVE_TRADING=1 and --live: trade on the real exchange
    broker: str = "paper"                        # SMC_BROKER: paper | binance
    symbols_per_shard: int = 50                  # SMC_SYMBOLS_PER_SHARD (<= 200 streams per connection)
    equity: float = 10_000.0                     # SMC_EQUITY: paper starting equity (USDT)
    delivery_timeout_s: float = 300.0            # SMC_DELIVERY_TIMEOUT_S: how long the processors wait out a broker outage, then exit non-zero
    metrics_port: int = 0                        # SMC_METRICS_PORT: the worker's /metrics /health /ready; executor + 1, ingest + 2; 0 = off
    metrics_addr: str = "127.0.0.1"              # SMC_METRICS_ADDR: the address the metrics endpoints bind (0.0.0.0 for a scraper elsewhere)
    api_key: str = field(default="", repr=False)      # BINANCE_API_KEY (environment only)
    api_secret: str = field(default="", repr=False)   # BINANCE_API_SECRET (environment only)

    def __repr__(self) -> str:  # never show secrets, even by accident
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        return f"Settings({shown})"

    def with_(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


SECRET_ENV = {"api_key": "BINANCE_API_KEY", "api_secret": "BINANCE_API_SECRET"}


class SettingsError(ValueError):
    """A setting that cannot be read: names the setting, where it came from, the value and what is valid."""


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _coerce(name: str, raw: str | int | float | bool, default, source: str = "SMC_*", typed: bool = False):
    """An environment variable's text parsed to the setting's type; a TOML value (typed=True) must
    already have that type (partitions = "6" is a mistake in the file, not a 6)."""
    def bad(expected: str) -> SettingsError:
        return SettingsError(f"setting {name} ({source}) = {raw!r}: expected {expected}")
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if not typed and isinstance(raw, str) and text in _TRUE + _FALSE:
            return text in _TRUE
        raise bad("a boolean (true/false)" if typed else "a boolean (1/0, true/false, yes/no, on/off)")
    if isinstance(raw, bool) or (typed and not isinstance(raw, str if isinstance(default, str) else
                                                         (int, float) if isinstance(default, float) else int)):
        raise bad("an integer" if isinstance(default, int) else "a number" if isinstance(default, float) else "a string")
    if isinstance(default, int):
        if isinstance(raw, float):
            raise bad("an integer")
        try:
            return int(raw)
        except ValueError:
            raise bad("an integer") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise bad("a number") from None
    if not isinstance(raw, str):
        raise bad("a string")
    return raw


def load_settings(config_file: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Settings:
    return resolve_settings(config_file, env)[0]


def resolve_settings(config_file: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                     flags: Mapping[str, tuple[object, str]] | None = None) -> tuple[Settings, dict[str, str]]:
    """The effective settings and, per setting, where its value came from: "default", the TOML file's
    path, the environment variable's name, or "flag --NAME". Layers, lowest first: defaults, the TOML
    file (config_file, else SMC_CONFIG), SMC_* variables, then `flags` ({setting: (value, flag name)},
    values already typed by the command line's parser)."""
    env = os.environ if env is None else env
    config_file = config_file or env.get("SMC_CONFIG")
    file_values: dict = {}
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                file_values = tomllib.load(fh)
        except FileNotFoundError:
            raise SettingsError(f"settings file not found: {config_file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"settings file {config_file} is not valid TOML: {exc}") from None
        unknown = sorted(set(file_values) - {f.name for f in dataclasses.fields(Settings)})
        if unknown:   # a typo must not be silently ignored
            raise SettingsError(f"unknown setting(s) {unknown} in {config_file}; known: "
                                + ", ".join(f.name for f in dataclasses.fields(Settings) if f.name not in SECRET_ENV))
        leaked = set(file_values) & set(SECRET_ENV)
        if leaked:
            raise SettingsError(f"secrets {sorted(leaked)} must come from the environment, not {config_file}")
    base = Settings()
    values, sources = {}, {}
    for f in dataclasses.fields(Settings):
        default = getattr(base, f.name)
        if f.name in SECRET_ENV:
            var = SECRET_ENV[f.name]
            values[f.name], sources[f.name] = (env[var], var) if var in env else ("", "default")
            continue
        var = f"SMC_{f.name.upper()}"
        if var in env:
            values[f.name], sources[f.name] = _coerce(f.name, env[var], default, var), var
        elif f.name in file_values:
            values[f.name] = _coerce(f.name, file_values[f.name], default, str(config_file), typed=True)
            sources[f.name] = str(config_file)
        else:
            values[f.name], sources[f.name] = default, "default"
    for name, (value, flag) in (flags or {}).items():
        if name not in values or name in SECRET_ENV:
            raise ValueError(f"{flag} does not set a known setting ({name!r})")   # a programming error
        values[name], sources[name] = value, f"flag {flag}"
    if sources["clickhouse_dsn"] == "default":
        # the embedded audit trail lives with the run's other data: under SMC_DATA_DIR, as the docs say
        values["clickhouse_dsn"] = f"chdb://{Path(values['data_dir']) / 'chdb'}"
        if sources["data_dir"] != "default":
            sources["clickhouse_dsn"] = f"default (under data_dir, {sources['data_dir']})"
    return Settings(**values), sources


_MASK = "********"


def shown(name: str, value) -> str:
    """A setting's value as it may be printed: a secret only as set / not set (never any of its
    characters), a URL's password replaced (a DSN may carry one)."""
    if name in SECRET_ENV:
        return f"{_MASK} (set)" if value else "(not set)"
    text = str(value)
    if "://" in text and "@" in text:
        parts = urlsplit(text)
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[1]
            text = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{_MASK}@{host}"))
    return text


def describe(settings: Settings, sources: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(setting, printable value, source) for every setting, in declaration order: `smc config show`."""
    return [(f.name, shown(f.name, getattr(settings, f.name)), sources.get(f.name, "default"))
            for f in dataclasses.fields(Settings)]


def to_env(settings: Settings) -> dict[str, str]:
    """The SMC_* environment that makes a child process load the same settings (secrets excluded)."""
    env = {}
    for f in dataclasses.fields(Settings):
        if f.name in SECRET_ENV:
            continue
        value = getattr(settings, f.name)
        env[f"SMC_{f.name.upper()}"] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return env
