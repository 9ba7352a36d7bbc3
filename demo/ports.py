"""Free TCP ports for the demo Triton: port 0 means "pick one for me".

Triton needs concrete port numbers on its command line, so a free port is
found by binding port 0 on the loopback interface and reading back what the
kernel chose. Another process could take the port between this check and
Triton's bind; for a test or a one-machine demo that window is harmless.
"""

from __future__ import annotations

import socket

PORT_MAX = 65535


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def resolve_port(port: int, host: str = "127.0.0.1") -> int:
    """``port`` itself, or a free port when ``port`` is 0."""
    if not 0 <= port <= PORT_MAX:
        raise ValueError(f"port must be in [0, {PORT_MAX}], got {port}")
    return port or free_port(host)
