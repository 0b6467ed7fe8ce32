"""The `nomad-build` command: parses options, calls the pipeline, prints. No logic of its own.

Exit statuses: 0 ok, 1 build failure, 2 bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

import builder
from builder import cli_lifecycle, pipeline
from builder.errors import BuildError, UserError

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
    help="Where artifacts go (never the state directory; see --force).",
)
FORCE_OPTION = click.option(
    "--force",
    is_flag=True,
    help="Write into an output directory nomad-build did not make (build replaces it whole).",
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


def _report(result: pipeline.Result) -> None:
    for ev in result.events:
        click.echo(f"{ev.kind}: {ev.what} ({ev.reason})", err=True)
    _warnings(result.warnings)


def _warnings(warnings: list[str]) -> None:
    for w in dict.fromkeys(warnings):
        click.echo(f"warning: {w}", err=True)


def _paths(paths: list[Path]) -> None:
    for p in paths:
        click.echo(str(p))


def _run(request: pipeline.Request) -> pipeline.Result:
    """Plan (every check, nothing written), then write; the plan's warnings come once."""
    result = pipeline.execute(pipeline.plan(request))
    _report(result)
    return result


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
    plan = pipeline.plan(pipeline.Request("check", cluster_file, state_dir))
    cluster = plan.cluster
    click.echo(
        f"cluster {cluster.name}: region {cluster.region}, datacenter {cluster.datacenter}, "
        f"domain {cluster.domain}, {len(cluster.servers)} servers "
        f"(bootstrap_expect {cluster.bootstrap_expect}), {len(cluster.nodes)} nodes"
    )
    rows = [("NODE", "ROLE", "OS", "ADDRESSES", "CERTIFICATE NAMES", "CERT EXPIRES")]
    for node in cluster.nodes:
        cert = plan.certificates[node.name]
        if cert.info is None:
            expiry = "to be issued"
        else:
            expiry = f"{cert.info.not_after:%Y-%m-%d}" + ("" if cert.current else " (re-issue)")
        names = ",".join(cluster.cert_names(node)[1])
        rows.append((node.name, node.role, node.os, ",".join(node.ips), names, expiry))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    click.echo("secrets (the CA key stays in state/; these are written 0600):")
    outputs = plan.outputs()
    for node in cluster.nodes:
        held = "node key, gossip key" if node.is_server else "node key"
        paths = [o.path for o in outputs if o.node == node.name and o.has_node_key]
        click.echo(f"  {node.name} ({held}): {', '.join(paths)}")
    for ev in plan.events:
        verb = ev.kind.replace("created", "create").replace("reissued", "re-issue")
        click.echo(f"plan: {verb} {ev.what} ({ev.reason})")
    _warnings(plan.warnings)


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
@FORCE_OPTION
@_errors
def render(
    cluster_file: Path, state_dir: Path | None, node_name: str, out_dir: Path, force: bool
) -> None:
    """Write one node's files under DIR as a root filesystem (creating missing secrets)."""
    request = pipeline.Request(
        "render", cluster_file, state_dir, out_dir, nodes=(node_name,), force=force
    )
    _paths(_run(request).published)


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
@FORCE_OPTION
@_errors
def package(
    cluster_file: Path,
    state_dir: Path | None,
    out_dir: Path,
    node_name: str,
    role: str | None,
    fmt: str | None,
    unsigned: bool,
    force: bool,
) -> None:
    """Build one node's package into OUT/debian/ or OUT/openbsd/."""
    request = pipeline.Request(
        "package",
        cluster_file,
        state_dir,
        out_dir,
        nodes=(node_name,),
        role=role,
        fmt=fmt,
        sign=not unsigned,
        force=force,
    )
    _paths(_run(request).published)


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@OUT_OPTION
@click.option("--node", "node_name", required=True, help="The node the image is for.")
@click.option("--kind", type=click.Choice(pipeline.IMAGE_KINDS), required=True)
@FORCE_OPTION
@_errors
def image(
    cluster_file: Path,
    state_dir: Path | None,
    out_dir: Path,
    node_name: str,
    kind: str,
    force: bool,
) -> None:
    """Build one node's boot seed (cloud-init ISO, Ubuntu autoinstall, OpenBSD autoinstall)."""
    request = pipeline.Request(
        "image", cluster_file, state_dir, out_dir, nodes=(node_name,), kind=kind, force=force
    )
    result = _run(request)
    _paths([p for p in result.published if not p.name.endswith((".deb", ".tgz"))])


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@OUT_OPTION
@FORCE_OPTION
@_errors
def repo(cluster_file: Path, state_dir: Path | None, out_dir: Path, force: bool) -> None:
    """Build every node's package and the signed apt / OpenBSD repositories."""
    _paths(_run(pipeline.Request("repo", cluster_file, state_dir, out_dir, force=force)).published)


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@OUT_OPTION
@FORCE_OPTION
@_errors
def build(cluster_file: Path, state_dir: Path | None, out_dir: Path, force: bool) -> None:
    """Build every artifact of every node, and the repositories, replacing OUT in one step."""
    _paths(_run(pipeline.Request("build", cluster_file, state_dir, out_dir, force=force)).published)


cli_lifecycle.register(cli, _errors, CLUSTER_OPTION, STATE_OPTION)  # pki, state, audit


def main() -> None:
    """Run the CLI; a usage error is one line on stderr and exit 2, like any bad input."""
    try:
        cli.main(prog_name="nomad-build", standalone_mode=False)
    except click.ClickException as e:
        click.echo(f"nomad-build: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("nomad-build: aborted", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
