"""The `nomad-build` command: parses options, calls the pipeline, prints. No logic of its own.

Exit statuses: 0 ok, 1 build failure, 2 bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

import builder
from builder import cli_lifecycle, pipeline
from builder import consul as consul_mod
from builder import report as report_mod
from builder.cli_common import CLUSTER_OPTION, FORCE_OPTION, OUT_OPTION, STATE_OPTION, handle_errors
from builder.errors import UserError
from builder.next_steps import next_steps
from builder.report import Report


def _node_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of --node: the nodes of the cluster file given so far."""
    names = pipeline.node_names(ctx.params.get("cluster_file") or Path("cluster.toml"))
    return [n for n in names if n.startswith(incomplete)]


def _output_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--json, -q and --strict, the same on every command that plans."""
    for option in reversed(
        [
            click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout."),
            click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors."),
            click.option("--strict", is_flag=True, help="Warnings are errors (exit 2)."),
        ]
    ):
        fn = option(fn)
    return fn


WAIT_OPTION = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="Wait this long for another run's lock on the state (else exit 1).",
)
NODE_HELP = "The node (completes from the cluster file)."


def _warnings(warnings: list[str]) -> None:
    for w in dict.fromkeys(warnings):
        click.echo(f"warning: {w}", err=True)


def _strict(warnings: list[str], strict: bool) -> None:
    if strict and warnings:
        raise UserError(f"{len(set(warnings))} warning(s) and --strict: {warnings[0]}")


def _shown(out: Path | None, path: str) -> str:
    """A published path as the operator named the output directory."""
    return str(out / path) if out is not None else path


def _run(request: pipeline.Request, *, as_json: bool, quiet: bool, strict: bool) -> None:
    """Plan (every check, nothing written), then write, then tell what happened."""
    started = time.monotonic()
    plan = pipeline.plan(request)
    _strict(plan.warnings, strict)
    result = pipeline.execute(plan)
    report = result.report
    report.seconds = round(time.monotonic() - started, 3)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
        return
    for ev in result.events:
        click.echo(f"{ev.kind}: {ev.what} ({ev.reason})", err=True)
    _warnings(result.warnings)
    if quiet:
        return
    out = request.out_dir
    for change in report.changes:
        shown = report_mod.Change(**{**vars(change), "path": _shown(out, change.path)})
        click.echo(report_mod.line(shown))
    click.echo(report.summary())
    if request.command == "build" and out is not None:
        state = plan.state_dir
        for line in next_steps(plan.cluster, out, state, result.artifacts):
            click.echo(line)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(builder.__version__, prog_name="nomad-build")
def cli() -> None:
    """Build every Nomad node's configuration, certificates and packages from one cluster file.

    \b
    Example:
      nomad-build check -c examples/bi-sbg.toml
      nomad-build build -c examples/bi-sbg.toml

    Shell completion: eval "$(_NOMAD_BUILD_COMPLETE=bash_source nomad-build)".
    """


@cli.command()
def version() -> None:
    """Print the version (as HashiCorp's tools do).

    \b
    Example:
      nomad-build version
    """
    click.echo(f"nomad-build v{builder.__version__}")


def _check_json(plan: pipeline.Plan, preview: Report) -> dict[str, Any]:
    cluster = plan.cluster
    doc = preview.to_json()
    doc["cluster"] = {
        "name": cluster.name,
        "region": cluster.region,
        "datacenter": cluster.datacenter,
        "domain": cluster.domain,
        "bootstrap_expect": cluster.bootstrap_expect,
    }
    outputs = plan.outputs()
    doc["nodes"] = [
        {
            "name": n.name,
            "role": n.role,
            "os": n.os,
            "addresses": list(n.ips),
            "certificate_names": list(cluster.cert_names(n)[1]),
            "certificate_not_after": None
            if plan.certificates[n.name].info is None
            else f"{plan.certificates[n.name].info.not_after:%Y-%m-%dT%H:%M:%SZ}",  # type: ignore[union-attr]
            "certificate_current": plan.certificates[n.name].current,
            "secrets_in": [o.path for o in outputs if o.node == n.name and o.has_node_key],
        }
        for n in cluster.nodes
    ]
    return doc


def _check_text(plan: pipeline.Plan, preview: Report) -> None:
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
        if consul_mod.enabled(cluster):  # every Consul agent is in the LAN gossip pool
            held += ", Consul key and gossip key"
        paths = [o.path for o in outputs if o.node == node.name and o.has_node_key]
        click.echo(f"  {node.name} ({held}): {', '.join(paths)}")
    for ev in plan.events:
        verb = ev.kind.replace("created", "create").replace("reissued", "re-issue")
        click.echo(f"plan: {verb} {ev.what} ({ev.reason})")
    for change in preview.changes:
        click.echo("package: " + report_mod.line(change))
    click.echo(preview.summary())


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="The output directory a build would replace (read, to compare).",
)
@_output_options
@handle_errors
def check(
    cluster_file: Path,
    state_dir: Path | None,
    out_dir: Path,
    as_json: bool,
    quiet: bool,
    strict: bool,
) -> None:
    """Validate the cluster file and print the plan: certificates, secrets, and each
    node's package with its current and next version and why. Writes nothing.

    \b
    Example:
      nomad-build check -c examples/bi-sbg.toml
      nomad-build check -c examples/bi-sbg.toml --json | jq .summary
    """
    plan = pipeline.plan(pipeline.Request("check", cluster_file, state_dir, out_dir))
    preview = pipeline.preview(plan)
    _strict(plan.warnings, strict)
    if as_json:
        click.echo(json.dumps(_check_json(plan, preview), indent=1))
        return
    if not quiet:
        _check_text(plan, preview)
    _warnings(plan.warnings)


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@click.option("--node", "node_name", required=True, help=NODE_HELP, shell_complete=_node_names)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Root of the node's file tree (DIR/etc/...).",
)
@FORCE_OPTION
@WAIT_OPTION
@handle_errors
def render(
    cluster_file: Path,
    state_dir: Path | None,
    node_name: str,
    out_dir: Path,
    force: bool,
    wait: float,
) -> None:
    """Write one node's files under DIR as a root filesystem (creating missing secrets);
    prints the files written.

    \b
    Example:
      nomad-build render -c examples/bi-sbg.toml --node bi-core-sbg-1 --out root/
    """
    request = pipeline.Request(
        "render", cluster_file, state_dir, out_dir, nodes=(node_name,), force=force, wait=wait
    )
    plan = pipeline.plan(request)
    result = pipeline.execute(plan)
    for ev in result.events:
        click.echo(f"{ev.kind}: {ev.what} ({ev.reason})", err=True)
    _warnings(result.warnings)
    for path in result.published:
        click.echo(str(path))


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@OUT_OPTION
@click.option("--node", "node_name", required=True, help=NODE_HELP, shell_complete=_node_names)
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
@WAIT_OPTION
@_output_options
@handle_errors
def package(
    cluster_file: Path,
    state_dir: Path | None,
    out_dir: Path,
    node_name: str,
    role: str | None,
    fmt: str | None,
    unsigned: bool,
    force: bool,
    wait: float,
    as_json: bool,
    quiet: bool,
    strict: bool,
) -> None:
    """Build one node's package into OUT/debian/ or OUT/openbsd/.

    \b
    Example:
      nomad-build package -c examples/bi-sbg.toml --role server --node bi-core-sbg-1
    """
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
        wait=wait,
    )
    _run(request, as_json=as_json, quiet=quiet, strict=strict)


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@OUT_OPTION
@click.option("--node", "node_name", required=True, help=NODE_HELP, shell_complete=_node_names)
@click.option("--kind", type=click.Choice(pipeline.IMAGE_KINDS), required=True)
@FORCE_OPTION
@WAIT_OPTION
@_output_options
@handle_errors
def image(
    cluster_file: Path,
    state_dir: Path | None,
    out_dir: Path,
    node_name: str,
    kind: str,
    force: bool,
    wait: float,
    as_json: bool,
    quiet: bool,
    strict: bool,
) -> None:
    """Build one node's boot seed (cloud-init ISO, Ubuntu autoinstall, OpenBSD autoinstall)
    and the package it carries.

    \b
    Example:
      nomad-build image -c examples/bi-sbg-debian.toml --node bi-node-sbg-2 --kind cloud-init
    """
    request = pipeline.Request(
        "image",
        cluster_file,
        state_dir,
        out_dir,
        nodes=(node_name,),
        kind=kind,
        force=force,
        wait=wait,
    )
    _run(request, as_json=as_json, quiet=quiet, strict=strict)


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@OUT_OPTION
@FORCE_OPTION
@WAIT_OPTION
@_output_options
@handle_errors
def repo(
    cluster_file: Path,
    state_dir: Path | None,
    out_dir: Path,
    force: bool,
    wait: float,
    as_json: bool,
    quiet: bool,
    strict: bool,
) -> None:
    """Build every node's package and the signed apt / OpenBSD repositories.

    \b
    Example:
      nomad-build repo -c examples/bi-sbg.toml
    """
    request = pipeline.Request("repo", cluster_file, state_dir, out_dir, force=force, wait=wait)
    _run(request, as_json=as_json, quiet=quiet, strict=strict)


@cli.command()
@CLUSTER_OPTION
@STATE_OPTION
@OUT_OPTION
@FORCE_OPTION
@WAIT_OPTION
@_output_options
@handle_errors
def build(
    cluster_file: Path,
    state_dir: Path | None,
    out_dir: Path,
    force: bool,
    wait: float,
    as_json: bool,
    quiet: bool,
    strict: bool,
) -> None:
    """Build every artifact of every node, the repositories, manifest.json and the signed
    SHA256SUMS, replacing OUT in one step; reports each artifact and what to do next.

    \b
    Example:
      nomad-build build -c examples/bi-sbg.toml
      nomad-build build -c examples/bi-sbg.toml --json > build.json
    """
    request = pipeline.Request("build", cluster_file, state_dir, out_dir, force=force, wait=wait)
    _run(request, as_json=as_json, quiet=quiet, strict=strict)


cli_lifecycle.register(cli)  # pki, state, audit


def main() -> None:
    """Run the CLI; a usage error is one line on stderr and exit 2, like any bad input."""
    pipeline.collect_rarely()  # one command per process
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
