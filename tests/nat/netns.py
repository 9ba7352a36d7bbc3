"""A network namespace joined to the root namespace by one veth pair: a
machine behind NAT, made by the test.

The pair gets a /30 out of 169.254.0.0/16 (link-local: never routed, so the
traffic stays on the pair); the namespace has its loopback, its end of the
pair and no other route: nothing outside reaches it except on that /30, and
from it only the host's end is reachable. Names are unique per run, and
``remove`` deletes everything, whatever state the test left.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass

IP_TIMEOUT_S = 20.0


def unavailable() -> str | None:
    """Why this machine cannot make namespaces, or None."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating a network namespace needs root"
    name = f"igprobe{secrets.token_hex(3)}"
    done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=IP_TIMEOUT_S,
                          check=False)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=IP_TIMEOUT_S, check=False)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Namespace:
    name: str
    host_if: str  # the root namespace's end of the pair
    ns_if: str  # the namespace's end
    host_ip: str
    ns_ip: str

    def exec_args(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str) -> str:
        done = subprocess.run(self.exec_args(*cmd), capture_output=True, text=True, timeout=IP_TIMEOUT_S,
                              check=True)
        return done.stdout


def create() -> Namespace:
    tag = secrets.token_hex(3)
    subnet = secrets.randbelow(250) + 2  # 169.254.<subnet>.<4k>/30; 169.254.0/1/255 left alone
    base = 4 * (secrets.randbelow(60) + 1)
    ns = Namespace(name=f"idlegrid-nat-{tag}", host_if=f"ignh{tag}", ns_if=f"ignn{tag}",
                   host_ip=f"169.254.{subnet}.{base + 1}", ns_ip=f"169.254.{subnet}.{base + 2}")
    try:
        _ip("netns", "add", ns.name)
        _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        _ip("link", "set", ns.ns_if, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
        _ip("link", "set", ns.host_if, "up")
        _ip("netns", "exec", ns.name, "ip", "addr", "add", f"{ns.ns_ip}/30", "dev", ns.ns_if)
        _ip("netns", "exec", ns.name, "ip", "link", "set", ns.ns_if, "up")
        _ip("netns", "exec", ns.name, "ip", "link", "set", "lo", "up")
    except BaseException:
        remove(ns)
        raise
    return ns


def remove(ns: Namespace) -> None:
    """Deletes the pair and the namespace (each step tolerates a missing part)."""
    for args in (("link", "del", ns.host_if), ("netns", "del", ns.name)):
        with contextlib.suppress(Exception):
            subprocess.run(["ip", *args], capture_output=True, timeout=IP_TIMEOUT_S, check=False)


def listeners(ns: Namespace) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket listening inside the namespace."""
    out = []
    for line in ns.run("ss", "-Hltn").splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        host, _, port = fields[3].rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out
