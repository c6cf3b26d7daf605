"""Brokers behind one interface: paper (default, deterministic) and Binance USDT-M (signed REST)."""
from executor.brokers.base import Broker, BrokerError, FillEvent, OrderUpdate

__all__ = ["Broker", "BrokerError", "FillEvent", "OrderUpdate"]
