"""Benchmark: how long a large cluster takes, stage by stage (`make bench`).

Generates a cluster of N nodes (3 servers, the rest clients, half OpenBSD, half
Debian), then times, in a fresh state directory: loading + validation, the first
render (every key and certificate made), a second render (nothing to make), and
building every package, the repositories and the images. Prints one line per
stage; no assertion — speed is read here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import ipaddress
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from builder.cluster import load
from builder.pipeline import Build
from builder.state import State

HEADER = """\
[cluster]
name = "bench"
region = "eu"
datacenter = "bench-1"
domain = "bench.example.org"

[images]
openbsd_sets_url = "http://10.0.0.1/pub/OpenBSD/7.8/amd64"

[defaults]
interface = "eth1"

[roles.client]
node_class = "batch"
drivers = ["raw_exec"]
"""


def cluster_text(nodes: int) -> str:
    parts = [HEADER]
    base = ipaddress.ip_address("10.0.0.10")
    for i in range(nodes):
        role = "server" if i < 3 else "client"
        os_name = "openbsd" if i % 2 else "debian"
        parts.append(
            f'[[nodes]]\nname = "n{i:05d}"\nrole = "{role}"\nos = "{os_name}"\n'
            f'address = "{base + i}"\nmeta = {{ rack = "r{i % 40}" }}\n'
        )
    return "\n".join(parts)


T = TypeVar("T")


def stage(label: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = fn()
    print(f"{label:<32} {time.perf_counter() - start:8.2f} s", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--packages", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cluster.toml"
        path.write_text(cluster_text(args.nodes))
        print(f"{args.nodes} nodes")
        cluster = stage("load + validate", lambda: load(path))
        with State.open(Path(tmp) / "state", create=True) as st:
            b = Build(cluster, st)
            stage("render, fresh state (all PKI)", lambda: b.render(cluster.nodes))
        with State.open(Path(tmp) / "state", create=True) as st:
            b = Build(cluster, st)
            stage("render again (nothing new)", lambda: b.render(cluster.nodes))
            if args.packages:
                pkgs = stage("every package", lambda: b.packages(cluster.nodes))
                stage("apt + OpenBSD repositories", lambda: b.repos(pkgs))
                deb = [n for n in cluster.nodes if n.os == "debian"]
                bsd = [n for n in cluster.nodes if n.os == "openbsd"]
                stage("cloud-init seed ISOs", lambda: b.images(deb, ["cloud-init"]))
                stage("OpenBSD autoinstall", lambda: b.images(bsd, ["openbsd-autoinstall"]))


if __name__ == "__main__":
    main()
