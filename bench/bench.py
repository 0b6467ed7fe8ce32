"""Benchmark: how long a large cluster takes, stage by stage (`make bench`).

Generates a cluster of N nodes (3 servers, the rest clients, half OpenBSD, half
Debian) and runs, each size in a fresh child process with a fresh state and
output directory: a cold build (every key, certificate and artifact made and
written to dist/), a no-op rebuild (nothing changed), and a rebuild with one
node changed. Each run is plan + execute, as `nomad-build build` does them. The
one-node change is timed as a maintained cluster sees it: after an earlier change
(untimed, its total printed below the table), so that dist/ has the spare tree a
publish brings up to date in place (builder.publish); the first change after a
cold build has none yet and assembles the whole tree afresh.
Then the by-hand way (openssl key + CSR + sign, `dpkg-deb --build`) on a
sample of the same nodes, for the per-node ratio.

Prints one table (seconds unless stated; stable format, one row per stage); no
assertion — speed is read here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import compileall
import ipaddress
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The builder of this checkout, whatever is installed (an editable install may point
# at another worktree).
CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

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

STAGES = (
    "load",
    "plan",
    "secrets",
    "render",
    "packages",
    "repositories",
    "seeds",
    "openbsd-autoinstall",
    "publish",
)
RUNS = ("cold", "no-op", "one node")


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


# ---------------------------------------------------------------- one size (child)


def _run(path: Path, out: Path) -> dict[str, float]:
    from builder import pipeline

    pipeline.collect_rarely()  # as the CLI's main() does
    wall, cpu = time.perf_counter(), time.process_time()
    plan = pipeline.plan(pipeline.Request("build", path, out_dir=out))
    result = pipeline.execute(plan)
    timings = {"total": time.perf_counter() - wall}
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker processes
    timings["cpu"] = time.process_time() - cpu + kids.ru_utime + kids.ru_stime
    stages = getattr(result, "timings", {})  # older versions did not time their stages
    timings.update(stages)
    if "plan" not in stages:  # an older version: all of it, but the writing run
        timings["plan"] = timings["total"] - sum(stages.values())
    timings["built"] = getattr(result, "built", -1)
    return timings


def child(nodes: int, run: str, workdir: Path) -> dict[str, Any]:
    """One run in this (fresh) process, as one `nomad-build build` is."""
    path = workdir / "cluster.toml"
    if run == "cold":
        path.write_text(cluster_text(nodes))
    elif run == "first change":
        path.write_text(path.read_text().replace('rack = "r3" }', 'rack = "first" }', 1))
    elif run == "one node":
        path.write_text(path.read_text().replace('rack = "r7" }', 'rack = "moved" }', 1))
    start = time.perf_counter()
    import builder.pipeline  # noqa: F401  (timed: the modules the CLI imports)
    from builder import writers

    writers.all_writers()  # every writer module a build imports
    imports = time.perf_counter() - start
    out = workdir / "dist"
    report: dict[str, Any] = _run(path, out)
    report["imports"] = imports
    report["artifacts"] = sum(len(files) for _, _, files in os.walk(out))
    report["dist_bytes"] = sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(out) for f in files
    )
    report["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["workers_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return report


# ---------------------------------------------------------------- by hand


def by_hand(sample: int, workdir: Path) -> dict[str, float]:
    """The manual way for `sample` Debian nodes of the bench cluster: a key, a CSR and a
    signed certificate with openssl, then the node's files packed with dpkg-deb."""
    from builder import pipeline

    path = workdir / "cluster.toml"
    path.write_text(cluster_text(max(2 * sample, 10)))
    plan = pipeline.plan(pipeline.Request("render", path, nodes=("n00000",)))
    tree = pipeline.execute(plan).trees["n00000"]
    ca = workdir / "ca"
    ca.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", ca / "ca.key", "-out", ca / "ca.pem", "-days", "3650",
         "-subj", "/CN=bench CA"],
        check=True, capture_output=True,
    )  # fmt: skip
    start = time.perf_counter()
    for i in range(0, 2 * sample, 2):  # the Debian nodes
        name = f"n{i:05d}"
        node = workdir / name
        root = node / "pkg"
        key, csr, cert = node / "key.pem", node / "req.csr", node / "cert.pem"
        root.mkdir(parents=True)
        run: list[list[str | Path]] = [
            ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", key],
            ["openssl", "req", "-new", "-key", key, "-out", csr,
             "-subj", f"/CN={name}.bench.example.org",
             "-addext", f"subjectAltName=DNS:{name}.bench.example.org,DNS:localhost,"
             "IP:127.0.0.1"],
            ["openssl", "x509", "-req", "-in", csr, "-CA", ca / "ca.pem", "-CAkey", ca / "ca.key",
             "-CAcreateserial", "-out", cert, "-days", "365", "-copy_extensions", "copy"],
        ]  # fmt: skip
        for argv in run:
            subprocess.run(argv, check=True, capture_output=True)
        for f in tree.files:
            target = root / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content)
            target.chmod(f.mode)
        for dest, src in (
            ("/etc/nomad.d/tls/node.pem", cert),
            ("/etc/nomad.d/tls/node-key.pem", key),
        ):
            target = root / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        (root / "DEBIAN").mkdir()
        (root / "DEBIAN" / "control").write_text(
            f"Package: nomad-config-{name}\nVersion: 1\nArchitecture: all\n"
            "Maintainer: bench <bench@example.org>\nDescription: Nomad configuration\n"
        )
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "--build", root, node / f"{name}.deb"],
            check=True,
            capture_output=True,
        )
    return {"sample": sample, "per_node": (time.perf_counter() - start) / sample}


# ---------------------------------------------------------------- the table


def _spawn(args: list[str], tmp: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, __file__, *args, "--workdir", str(tmp)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _cell(value: float) -> str:
    return f"{value:8.3f}"


def table(reports: list[dict[str, Any]], hand: dict[str, float]) -> str:
    cols = [(r, run) for r in reports for run in RUNS]
    lines = [f"nomad-build benchmark, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"]
    names = [f"{r['nodes']} {run}" for r, run in cols]
    head = f"{'stage':<22}" + "".join(f"{n:>15}" for n in names)
    if len(reports) > 1:
        head += f"{'cold x' + str(reports[-1]['nodes'] // reports[0]['nodes']):>10}"
    lines += [head, "-" * len(head)]
    for stage in ("imports", *STAGES, "total", "cpu"):
        label = {
            "imports": "imports (not in total)",
            "total": "total (wall)",
            "cpu": "CPU time",
            "plan": "plan (other checks)",
        }
        row = f"{label.get(stage, stage):<22}"
        row += "".join(f"{_cell(r[run].get(stage, 0.0)):>15}" for r, run in cols)
        if len(reports) > 1:
            a, b = reports[0]["cold"].get(stage, 0.0), reports[-1]["cold"].get(stage, 0.0)
            row += f"{(b / a if a > 0.001 else 0.0):>9.2f}x"
        lines.append(row)
    row = f"{'CPU % (100% = 1 core)':<22}" + "".join(
        f"{100 * r[run]['cpu'] / max(r[run]['total'], 1e-9):>14.0f}%" for r, run in cols
    )
    lines.append(row)
    row = f"{'peak RSS (MB)':<22}" + "".join(f"{r[run]['rss_mb']:>15.0f}" for r, run in cols)
    lines.append(row)
    row = f"{'builds (writer calls)':<22}" + "".join(
        f"{int(r[run]['built']):>15d}" for r, run in cols
    )
    lines.append(row)
    lines.append("")
    for r in reports:
        per_node = 1000 * r["cold"]["total"] / r["nodes"]
        lines.append(
            f"{r['nodes']} nodes: {r['artifacts']} files, {r['dist_bytes'] / 1e6:.1f} MB in "
            f"dist/, peak RSS {r['rss_mb']:.0f} MB, cold {per_node:.2f} ms/node"
        )
    for r in reports:
        one, noop = r["one node"]["total"], r["no-op"]["total"]
        lines.append(
            f"{r['nodes']} nodes, one node changed: {one:.3f} s = a no-op's {noop:.3f} s + "
            f"{one - noop:.3f} s for the change ({int(r['one node']['built'])} writer calls, "
            "the indexes, manifest and signature, the spare tree brought up to date); "
            f"the first change after the cold build (whole tree linked afresh): "
            f"{r['first change']['total']:.3f} s"
        )
    first = reports[0]
    ours = first["cold"]["total"] / first["nodes"]
    lines.append(
        f"by hand (openssl key+CSR+sign, dpkg-deb --build), {int(hand['sample'])} nodes: "
        f"{1000 * hand['per_node']:.1f} ms/node; nomad-build cold {1000 * ours:.2f} ms/node "
        f"(every artifact); ratio {hand['per_node'] / ours:.1f}x"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, nargs="*", default=[1000, 3000])
    ap.add_argument("--sample", type=int, default=10, help="nodes done by hand")
    ap.add_argument("--tmp", type=Path, default=None, help="where the work directories go")
    ap.add_argument("--json", action="store_true", help="also print the raw numbers")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--run", choices=(*RUNS, "first change"), help=argparse.SUPPRESS)
    ap.add_argument("--hand", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.run, args.workdir)))
        return
    if args.hand is not None:
        print(json.dumps(by_hand(args.hand, args.workdir)))
        return
    # Byte-compiled first, as pip does at install and the one-file binary carries it:
    # where PYTHONDONTWRITEBYTECODE is set (this machine sets it) every run would
    # otherwise compile the modules it imports, inside the timed plan.
    compileall.compile_dir(str(CHECKOUT / "builder"), quiet=1)
    reports = []
    for n in args.nodes:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            report: dict[str, Any] = {"nodes": n}
            for run in RUNS:
                if run == "one node":  # the cluster's first change: untimed in the table
                    first = _spawn(["--child", str(n), "--run", "first change"], Path(tmp))
                    report["first change"] = first
                report[run] = _spawn(["--child", str(n), "--run", run], Path(tmp))
            report["artifacts"] = report["cold"]["artifacts"]
            report["dist_bytes"] = report["cold"]["dist_bytes"]
            report["rss_mb"] = max(report[run]["rss_mb"] for run in RUNS)
            reports.append(report)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        hand = _spawn(["--hand", str(args.sample)], Path(tmp))
    print(table(reports, hand))
    if args.json:
        print(json.dumps({"reports": reports, "by_hand": hand}))


if __name__ == "__main__":
    main()
