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

from builder import pipeline
from builder.cluster import load

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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cluster.toml"
        path.write_text(cluster_text(args.nodes))
        print(f"{args.nodes} nodes")
        stage("load + validate", lambda: load(path))
        request = pipeline.Request("build", path, out_dir=Path(tmp) / "dist")
        plan = stage("plan, fresh state", lambda: pipeline.plan(request))
        stage("build, fresh state (all PKI)", lambda: pipeline.execute(plan))
        plan = stage("plan again", lambda: pipeline.plan(request))
        stage("build again (nothing new)", lambda: pipeline.execute(plan))
        text = path.read_text().replace('rack = "r7" }', 'rack = "moved" }', 1)
        path.write_text(text)
        stage("one node changed", lambda: pipeline.execute(pipeline.plan(request)))


if __name__ == "__main__":
    main()
