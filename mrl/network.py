"""Network checks that keep runs from hanging on an unreachable service (W&B, model hubs)."""

from __future__ import annotations

import socket


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
