"""Pod IPs that real processes listen on: a network namespace of the test's own, joined to the
host by a veth pair, holding the addresses kwok gives the pods.

Endpoints and EndpointSlices may not carry loopback addresses (the API refuses 127.0.0.0/8),
so kwok pods cannot get 127.x IPs. Instead the kwok node's podCIDR is routed to this namespace:
each pod IP is added there and a real unit serves on it (`ip netns exec`), and this process
reaches it through the veth pair. Only addresses inside the namespace are ever contacted.
Needs root and iproute2 (`ip`); `available()` says why not otherwise.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def available() -> str:
    """'' when a pod network can be made here, else the reason."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "making a network namespace needs root"
    return ""


@dataclass
class PodNetwork:
    """Namespace `name` with the pod CIDR; the host side of the link has the CIDR's last address."""

    pod_cidr: str = "10.244.0.0/25"
    link_cidr: str = "10.244.0.0/24"
    name: str = field(default_factory=lambda: f"eok8s{os.getpid() % 100000}")
    addresses: set[str] = field(default_factory=set)

    @property
    def host_side(self) -> str:
        return f"{self.name}h"

    @property
    def pod_side(self) -> str:
        return f"{self.name}p"

    @property
    def host_address(self) -> str:
        return str(ipaddress.ip_network(self.link_cidr)[-2])

    @property
    def prefix(self) -> tuple[str, ...]:
        """Run a command inside the namespace."""
        return ("ip", "netns", "exec", self.name)

    def start(self) -> "PodNetwork":
        length = ipaddress.ip_network(self.link_cidr).prefixlen
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_side, "type", "veth", "peer", "name", self.pod_side, "netns", self.name)
            _ip("addr", "add", f"{self.host_address}/{length}", "dev", self.host_side)
            _ip("link", "set", self.host_side, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip("-n", self.name, "link", "set", self.pod_side, "up")
        except subprocess.CalledProcessError:
            self.stop()
            raise
        return self

    def add(self, address: str) -> None:
        """Give the namespace a pod's IP (idempotent)."""
        if address in self.addresses:
            return
        if ipaddress.ip_address(address) not in ipaddress.ip_network(self.pod_cidr):
            raise ValueError(f"{address} is outside the pod CIDR {self.pod_cidr}")
        length = ipaddress.ip_network(self.link_cidr).prefixlen
        _ip("-n", self.name, "addr", "add", f"{address}/{length}", "dev", self.pod_side)
        self.addresses.add(address)

    def stop(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_side], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
