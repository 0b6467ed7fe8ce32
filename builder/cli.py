"""The `nomad-build` command: parses options, calls the pipeline, prints. No logic of its own.

Exit statuses: 0 ok, 1 build failure, 2 bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any

import click

import builder
from builder import cluster as cluster_mod
from builder import pipeline, publish
from builder.errors import BuildError, UserError
from builder.model import Cluster
from builder.render import ca_spec, cert_spec
from builder.state import State

CLUSTER_OPTION = click.option(
    "-c",
    "--cluster",
    "cluster_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("cluster.toml"),
    show_default=True,
    help="The cluster file.",
)
STATE_OPTION = click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Secrets store (CA, keys, versions). Default: state/ beside the cluster file.",
)
OUT_OPTION = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="Where artifacts go.",
)


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors: one line, exit 2. Build failures: one line, exit 1. Never a traceback."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            click.echo(f"nomad-build: {e}", err=True)
            sys.exit(2)
        except BuildError as e:
            click.echo(f"nomad-build: build failed: {e}", err=True)
            sys.exit(1)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"nomad-build: {where}{e.strerror or e}", err=True)
            sys.exit(1)

    return run


def _state_dir(cluster: Cluster, state_dir: Path | None) -> Path:
    return state_dir if state_dir is not None else cluster.source.parent / "state"


def _report(st: State) -> None:
    for ev in st.events:
        click.echo(f"{ev.kind}: {ev.what} ({ev.reason})", err=True)


def _paths(paths: list[Path]) -> None:
    for p in paths:
        click.echo(str(p))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(builder.__version__, prog_name="nomad-build")
def cli() -> None:
    """Build every Nomad node's configuration, certificates and packages from one cluster file.

    Shell completion: eval "$(_NOMAD_BUILD_COMPLETE=bash_source nomad-build)".
    """


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@_errors
def check(cluster_file: Path, state_dir: Path | None) -> None:
    """Validate the cluster file and print the plan; writes nothing."""
    cluster = cluster_mod.load(cluster_file)
    st = State.open(_state_dir(cluster, state_dir), create=False)
    click.echo(
        f"cluster {cluster.name}: region {cluster.region}, datacenter {cluster.datacenter}, "
        f"domain {cluster.domain}, {len(cluster.servers)} servers "
        f"(bootstrap_expect {cluster.bootstrap_expect}), {len(cluster.nodes)} nodes"
    )
    # Read-only, the store records what a writing run would create or re-issue, and why.
    ca = st.ca(ca_spec(cluster))
    st.gossip_key()
    rows = [("NODE", "ROLE", "OS", "ADDRESSES", "CERTIFICATE NAMES", "CERT EXPIRES")]
    for node in cluster.nodes:
        spec = cert_spec(cluster, node)
        current = st.node_cert(node.name, spec, ca)
        info = st.cert_info(node.name)
        if info is None:
            expiry = "to be issued"
        else:
            expiry = info.not_after.strftime("%Y-%m-%d") + ("" if current else " (re-issue)")
        rows.append(
            (node.name, node.role, node.os, ",".join(node.ips), ",".join(spec.dns_names), expiry)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    click.echo("secrets (the CA key stays in state/; these are written 0600):")
    for node in cluster.nodes:
        held = "node key, gossip key" if node.is_server else "node key"
        click.echo(f"  {node.name} ({held}): {', '.join(pipeline.secret_artifacts(node))}")
    for ev in st.events:
        click.echo(
            f"plan: {ev.kind.replace('created', 'create').replace('reissued', 're-issue')}"
            f" {ev.what} ({ev.reason})"
        )
    for w in cluster.warnings:
        click.echo(f"warning: {w}", err=True)


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@click.option("--node", "node_name", required=True, help="The node to render.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Root of the node's file tree (DIR/etc/...).",
)
@_errors
def render(cluster_file: Path, state_dir: Path | None, node_name: str, out_dir: Path) -> None:
    """Write one node's files under DIR as a root filesystem (creating missing secrets)."""
    cluster = cluster_mod.load(cluster_file)
    node = cluster.node(node_name)
    with State.open(_state_dir(cluster, state_dir), create=True) as st:
        tree = pipeline.Build(cluster, st).tree(node)
        _report(st)
    paths = publish.write_root(out_dir, ((f.path, f.content, f.mode) for f in tree.files))
    for d in tree.dirs:
        target = out_dir / d.path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(d.mode)
    _paths(paths)


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@OUT_OPTION
@click.option("--node", "node_name", required=True, help="The node to package.")
@click.option(
    "--role",
    type=click.Choice(["server", "client", "both"]),
    help="Must match the node's role in the cluster file (a guard against the wrong node).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["deb", "openbsd"]),
    help="Default: the node's OS's format.",
)
@click.option("--unsigned", is_flag=True, help="OpenBSD: do not sign (pkg_add -D unsigned).")
@_errors
def package(
    cluster_file: Path,
    state_dir: Path | None,
    out_dir: Path,
    node_name: str,
    role: str | None,
    fmt: str | None,
    unsigned: bool,
) -> None:
    """Build one node's package into OUT/debian/ or OUT/openbsd/."""
    cluster = cluster_mod.load(cluster_file)
    node = cluster.node(node_name)
    pipeline.check_request(cluster, node, role=role, fmt=fmt)
    with State.open(_state_dir(cluster, state_dir), create=True) as st:
        artifact = pipeline.Build(cluster, st, sign=not unsigned).packages([node])[0]
        st.flush()
        _report(st)
    _paths(pipeline.publish_some(out_dir, [artifact]))


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@OUT_OPTION
@click.option("--node", "node_name", required=True, help="The node the image is for.")
@click.option("--kind", type=click.Choice(pipeline.IMAGE_KINDS), required=True)
@_errors
def image(
    cluster_file: Path, state_dir: Path | None, out_dir: Path, node_name: str, kind: str
) -> None:
    """Build one node's boot seed (cloud-init ISO, Ubuntu autoinstall, OpenBSD autoinstall)."""
    cluster = cluster_mod.load(cluster_file)
    node = cluster.node(node_name)
    pipeline.check_image_request(cluster, node, kind)
    with State.open(_state_dir(cluster, state_dir), create=True) as st:
        artifacts = pipeline.Build(cluster, st).images([node], [kind])
        st.flush()
        _report(st)
    _paths(pipeline.publish_some(out_dir, artifacts))


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@OUT_OPTION
@_errors
def repo(cluster_file: Path, state_dir: Path | None, out_dir: Path) -> None:
    """Build every node's package and the signed apt / OpenBSD repositories."""
    cluster = cluster_mod.load(cluster_file)
    with State.open(_state_dir(cluster, state_dir), create=True) as st:
        build = pipeline.Build(cluster, st)
        pkgs = build.packages(cluster.nodes)
        artifacts = pkgs + build.repos(pkgs)
        st.flush()
        _report(st)
    _paths(pipeline.publish_some(out_dir, artifacts))


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@OUT_OPTION
@_errors
def build(cluster_file: Path, state_dir: Path | None, out_dir: Path) -> None:
    """Build every artifact of every node, and the repositories, replacing OUT in one step."""
    cluster = cluster_mod.load(cluster_file)
    with State.open(_state_dir(cluster, state_dir), create=True) as st:
        artifacts = pipeline.Build(cluster, st).everything()
        st.flush()
        _report(st)
    _paths(pipeline.publish_all(out_dir, artifacts))


@cli.group()
def pki() -> None:
    """Certificate lifecycle."""


@pki.command("status")
@CLUSTER_OPTION
@STATE_OPTION
@_errors
def pki_status(cluster_file: Path, state_dir: Path | None) -> None:
    """Every node certificate's names and expiry, read-only."""
    cluster = cluster_mod.load(cluster_file)
    st = State.open(_state_dir(cluster, state_dir), create=False)
    now = datetime.now(UTC)
    for node in cluster.nodes:
        info = st.cert_info(node.name)
        if info is None:
            click.echo(f"{node.name}: no certificate yet")
            continue
        days = (info.not_after - now).days
        click.echo(
            f"{node.name}: {info.subject_cn}, expires {info.not_after:%Y-%m-%d} "
            f"({days} days), names {','.join(info.dns_names)}, IPs {','.join(info.ip_addresses)}"
        )


@pki.command("renew")
@CLUSTER_OPTION
@STATE_OPTION
@_errors
def pki_renew(cluster_file: Path, state_dir: Path | None) -> None:
    """Create missing secrets and re-issue every certificate that no longer fits or expires soon."""
    cluster = cluster_mod.load(cluster_file)
    with State.open(_state_dir(cluster, state_dir), create=True) as st:
        b = pipeline.Build(cluster, st)
        b.render(cluster.nodes)
        _report(st)
        if not st.events:
            click.echo("every certificate is current", err=True)


def main() -> None:
    cli(prog_name="nomad-build")


if __name__ == "__main__":
    main()
