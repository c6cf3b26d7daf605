"""Free local ports for the servers a test starts (Kafka brokers, metrics endpoints).

Chosen below the kernel's ephemeral range: a port the OS hands out for bind(0) is also one it hands
to outgoing connections, so between the check and the server's own bind a Kafka client can take it
(CI once failed this way: the executor died 6 times on "Address already in use" for its metrics port).
"""
from __future__ import annotations

import random
import socket
from pathlib import Path


def ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_run(n: int = 1) -> int:
    """A port p with p .. p + n - 1 all free now, below the ephemeral range."""
    low = ephemeral_low()
    for _ in range(100):
        port = random.randrange(10_000, max(10_001, low - n))
        socks = [socket.socket() for _ in range(n)]
        try:
            for i, sock in enumerate(socks):
                sock.bind(("127.0.0.1", port + i))
            return port
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {n} adjacent free ports below {low}")
