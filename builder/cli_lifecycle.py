"""The lifecycle commands: `pki ...`, `state ...`, `audit`. Parse, call, print.

Registered on the main group by builder.cli with `cli_lifecycle.register(cli)`; the
work is in builder.lifecycle, builder.rotation, builder.backup and builder.audit.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from builder import audit as audit_mod
from builder import authority, lifecycle, pipeline, rotation
from builder import backup as backup_mod
from builder import cluster as cluster_mod
from builder.cli_common import CLUSTER_OPTION, STATE_OPTION, handle_errors
from builder.errors import UserError
from builder.state import Event, State

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _events(events: list[Event], warnings: list[str]) -> None:
    for ev in events:
        click.echo(f"{ev.kind}: {ev.what} ({ev.reason})", err=True)
    for w in dict.fromkeys(warnings):
        click.echo(f"warning: {w}", err=True)


def _passphrase(passphrase_file: Path | None, *, confirm: bool) -> bytes:
    if passphrase_file is not None:
        try:
            text = passphrase_file.read_text()
        except OSError as e:
            raise UserError(f"{passphrase_file}: {e.strerror}") from None
        return text.rstrip("\n").encode()
    if not sys.stdin.isatty():
        raise UserError("no terminal to ask the passphrase on: use --passphrase-file FILE")
    value: str = click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)
    return value.encode()


def _state_dir(cluster_file: Path, state_dir: Path | None) -> Path:
    if state_dir is not None:
        return state_dir
    return cluster_mod.load(cluster_file).source.parent / "state"


def _authority_text(
    title: str, suffix: str, auth: lifecycle.AuthorityStatus, now: datetime
) -> None:
    """The CA line, then one line per node ("<node><suffix>: ...")."""
    ca = auth.ca
    if auth.state == "damaged":
        click.echo(f"{title}: damaged: {auth.reason}")
    elif ca is None:
        click.echo(f"{title}: missing ({auth.reason})")
    else:
        days = (ca.not_after - now).days
        click.echo(
            f"{title}: {auth.state}: {ca.subject_cn}, permitted {','.join(ca.permitted_dns)}, "
            f"expires {ca.not_after:%Y-%m-%d} ({days} days)"
            + (f": {auth.reason}" if auth.reason else "")
        )
    for n in auth.nodes:
        if n.state == "damaged":
            click.echo(f"{n.node}{suffix}: damaged: {'; '.join(n.reasons)}")
            continue
        if n.info is None:
            click.echo(f"{n.node}{suffix}: missing (no certificate yet)")
            continue
        line = (
            f"{n.node}{suffix}: {n.state}: {n.info.subject_cn}, expires "
            f"{n.info.not_after:%Y-%m-%d} ({n.days_left} days), "
            f"names {','.join(n.info.dns_names)}, IPs {','.join(n.info.ip_addresses)}"
        )
        click.echo(line + (f" ({'; '.join(n.reasons)})" if n.reasons else ""))


def _status_text(report: lifecycle.StatusReport) -> None:
    _authority_text("CA", "", report.nomad, report.now)
    if report.consul is not None:
        _authority_text("Consul CA", " (Consul)", report.consul, report.now)
    gossip = (rotation.NOMAD_GOSSIP.current, rotation.CONSUL_GOSSIP.current)
    for d in report.damage:
        if d["file"] in gossip:
            click.echo(f"gossip key: damaged: {d['problem']}")
    for name, rot in report.rotations.items():
        if rot is not None:
            click.echo(f"rotation {name}: stage {rot['stage']} of {rot['of']}: next {rot['next']}")


@click.group()
def pki() -> None:
    """Certificate and key lifecycle: status, renewal, rotations.

    \b
    Example:
      nomad-build pki status -c examples/bi-sbg.toml
    """


@pki.command("status")
@CLUSTER_OPTION
@STATE_OPTION
@JSON_OPTION
@handle_errors
def pki_status(cluster_file: Path, state_dir: Path | None, as_json: bool) -> None:
    """The CA, every node certificate and any rotation under way; read-only.

    With [consul.agent] on, the Consul CA and every node's Consul certificate too.

    Exit 0 when all is ok, 1 when anything needs action (a lost or changed secret,
    missing, stale, expiring, expired, a rotation under way), 2 on bad input.
    --json: docs/output.schema.json.

    \b
    Example:
      nomad-build pki status -c examples/bi-sbg.toml --json
    """
    report = lifecycle.status(cluster_file, state_dir)
    if as_json:
        _print_json(report.as_json())
    else:
        _status_text(report)
        for w in dict.fromkeys(report.warnings):
            click.echo(f"warning: {w}", err=True)
    sys.exit(1 if report.action_needed else 0)


@pki.command("renew")
@CLUSTER_OPTION
@STATE_OPTION
@click.option("--node", "nodes", multiple=True, help="Re-issue exactly this node (repeat).")
@click.option("--all", "all_nodes", is_flag=True, help="Re-issue every node's certificate.")
@click.option(
    "--within",
    "within",
    type=click.IntRange(min=0),
    help="Also re-issue certificates that expire within DAYS.",
)
@click.option("--rekey", is_flag=True, help="New key pairs (a compromised key).")
@click.option(
    "--only",
    type=click.Choice(["nomad", "consul"]),
    help="Only Nomad's or only Consul's certificates (default: both).",
)
@handle_errors
def pki_renew(
    cluster_file: Path,
    state_dir: Path | None,
    nodes: tuple[str, ...],
    all_nodes: bool,
    within: int | None,
    rekey: bool,
    only: str | None,
) -> None:
    """Create missing secrets and re-issue what is stale or expiring (or the named nodes).

    With [consul.agent] on, the Consul certificates too: `--node X` renews everything of
    X (both certificates; with --rekey both key pairs) unless --only narrows it.

    \b
    Example:
      nomad-build pki renew -c examples/bi-sbg.toml --node bi-node-sbg-1 --rekey
    """
    out = lifecycle.renew(
        cluster_file,
        state_dir,
        nodes=nodes,
        all_nodes=all_nodes,
        within_days=within,
        rekey=rekey,
        only=only,
    )
    _events(out.events, out.warnings)
    if not out.events:
        click.echo("every certificate is current", err=True)
    for line in out.lines:
        click.echo(line)


@pki.command("cli-cert")
@CLUSTER_OPTION
@STATE_OPTION
@click.option("--name", default="operator", show_default=True, help="Who it is for.")
@click.option("--days", type=int, help="Validity (default pki.cert_days).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the files (default state/cli/NAME; never inside dist/).",
)
@click.option("--addr", default="https://127.0.0.1:4646", show_default=True, help="NOMAD_ADDR.")
@handle_errors
def pki_cli_cert(
    cluster_file: Path,
    state_dir: Path | None,
    name: str,
    days: int | None,
    out: Path | None,
    addr: str,
) -> None:
    """An operator certificate (cli.<region>.nomad) and a nomad.env for the nomad CLI.

    \b
    Example:
      nomad-build pki cli-cert -c examples/bi-sbg.toml --name alice
    """
    result = lifecycle.cli_cert(cluster_file, state_dir, name=name, days=days, out=out, addr=addr)
    _events(result.events, result.warnings)
    for line in result.lines:
        click.echo(line)


@pki.command("rotate-ca")
@CLUSTER_OPTION
@STATE_OPTION
@click.option(
    "--consul",
    "consul_ca",
    is_flag=True,
    help="The Consul CA ([consul.agent] on) instead of the cluster (Nomad) CA.",
)
@click.option(
    "--lost",
    is_flag=True,
    help="The CA's key or certificate is lost or damaged for good: a new CA at once, every "
    "node certificate re-issued (every node must then be redeployed).",
)
@JSON_OPTION
@handle_errors
def pki_rotate_ca(
    cluster_file: Path, state_dir: Path | None, consul_ca: bool, lost: bool, as_json: bool
) -> None:
    """Replace the CA in three rolled-out stages (run once per stage).

    \b
    Example:
      nomad-build pki rotate-ca -c examples/bi-sbg.toml
    """
    cluster = cluster_mod.load(cluster_file)
    auth = authority.CONSUL if consul_ca else authority.NOMAD
    with State.open(_state_dir(cluster_file, state_dir), create=True) as st:
        if lost:
            lines = rotation.replace_lost_ca(cluster, st, auth)
        else:
            lines = rotation.rotate_ca(cluster, st, auth)
        events, warnings = list(st.events), list(st.warnings)
        stage = rotation.status(st)[auth.record]
    command = "pki rotate-ca --consul" if consul_ca else "pki rotate-ca"
    _rotation_step(as_json, command, stage, lines, events, warnings)


@pki.command("rotate-signing-key")
@CLUSTER_OPTION
@STATE_OPTION
@click.option("--apt", "apt", is_flag=True, help="The apt repository's OpenPGP key.")
@click.option("--openbsd", "openbsd", is_flag=True, help="The OpenBSD package signify key.")
@click.option(
    "--lost",
    is_flag=True,
    help="The current key is lost or damaged for good: a new one at once (nodes then "
    "need it installed by hand).",
)
@JSON_OPTION
@handle_errors
def pki_rotate_signing_key(
    cluster_file: Path,
    state_dir: Path | None,
    apt: bool,
    openbsd: bool,
    lost: bool,
    as_json: bool,
) -> None:
    """Replace a package signing key in three rolled-out stages (run once per stage).

    \b
    1. a new key; nodes are sent it (in packages signed by the old key)
    2. the new key signs
    3. the old key is archived and no longer trusted

    \b
    Example:
      nomad-build pki rotate-signing-key -c examples/bi-sbg.toml --apt
    """
    if apt == openbsd:
        raise UserError("pki rotate-signing-key: give exactly one of --apt and --openbsd")
    cluster = cluster_mod.load(cluster_file)
    kind = "apt_key" if apt else "openbsd_key"
    with State.open(_state_dir(cluster_file, state_dir), create=True) as st:
        if lost:
            lines = rotation.replace_lost_key(cluster, st, kind)
        elif apt:
            lines = rotation.rotate_apt_key(cluster, st)
        else:
            lines = rotation.rotate_signify_key(cluster, st)
        events, warnings = list(st.events), list(st.warnings)
        stage = rotation.status(st)[kind]
    command = f"pki rotate-signing-key --{'apt' if apt else 'openbsd'}"
    _rotation_step(as_json, command, stage, lines, events, warnings)


def _rotation_step(
    as_json: bool,
    command: str,
    stage: object,
    lines: list[str],
    events: list[Event],
    warnings: list[str],
) -> None:
    """What a staged rotation step did: its rotation_step document, or the events and
    the operator's next steps."""
    if as_json:
        _print_json({"schema": 1, "command": command, "status": stage, "next": lines})
        return
    _events(events, warnings)
    for line in lines:
        click.echo(line)


@pki.command("rotate-gossip")
@CLUSTER_OPTION
@STATE_OPTION
@click.option("--finish", is_flag=True, help="The pool uses the new key: make it current.")
@click.option(
    "--consul",
    "consul_pool",
    is_flag=True,
    help="The Consul agents' gossip key ([consul.agent] on) instead of Nomad's.",
)
@click.option(
    "--lost",
    is_flag=True,
    help="The stored key is lost or damaged for good: a new one at once (the running pool "
    "still holds the old one in its keyring).",
)
@JSON_OPTION
@handle_errors
def pki_rotate_gossip(
    cluster_file: Path,
    state_dir: Path | None,
    finish: bool,
    consul_pool: bool,
    lost: bool,
    as_json: bool,
) -> None:
    """A new gossip key: prints the `nomad operator gossip keyring` sequence to run
    (with --consul: the `consul keyring` sequence).

    \b
    Example:
      nomad-build pki rotate-gossip -c examples/bi-sbg.toml
    """
    cluster = cluster_mod.load(cluster_file)
    pool = rotation.CONSUL_GOSSIP if consul_pool else rotation.NOMAD_GOSSIP
    with State.open(_state_dir(cluster_file, state_dir), create=True) as st:
        if lost and finish:
            raise UserError("pki rotate-gossip: --lost and --finish exclude each other")
        if lost:
            commands, lines = rotation.replace_lost_gossip(cluster, st, pool)
        else:
            commands, lines = rotation.rotate_gossip(cluster, st, finish=finish, pool=pool)
        events, warnings = list(st.events), list(st.warnings)
    if as_json:
        _print_json({"schema": 1, "command": pool.command, "commands": commands, "next": lines})
        return
    _events(events, warnings)
    for c in commands:
        click.echo(c)
    for line in lines:
        click.echo(f"# {line}" if commands else line)


@click.group()
def state() -> None:
    """The secrets store: adopt, backup, restore.

    \b
    Example:
      nomad-build state backup -c examples/bi-sbg.toml --to state.backup
    """


@state.command("adopt")
@CLUSTER_OPTION
@STATE_OPTION
@handle_errors
def state_adopt(cluster_file: Path, state_dir: Path | None) -> None:
    """Record a store made before nomad-build kept a ledger of its secrets (once).

    \b
    Example:
      nomad-build state adopt -c examples/bi-sbg.toml
    """
    for w in dict.fromkeys(pipeline.adopt_state(cluster_file, state_dir)):
        click.echo(f"warning: {w}", err=True)


passphrase_option = click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the passphrase from FILE (first line) instead of asking.",
)


@state.command("backup")
@CLUSTER_OPTION
@STATE_OPTION
@click.option("--to", "to", type=click.Path(dir_okay=False, path_type=Path), required=True)
@passphrase_option
@handle_errors
def state_backup(
    cluster_file: Path, state_dir: Path | None, to: Path, passphrase_file: Path | None
) -> None:
    """One encrypted archive (AES-256-GCM, Scrypt) of the whole state.

    \b
    Example:
      nomad-build state backup -c examples/bi-sbg.toml --to state.backup
    """
    directory = _state_dir(cluster_file, state_dir)
    count = backup_mod.backup(directory, to, _passphrase(passphrase_file, confirm=True))
    click.echo(f"{to}: {count} files of {directory}", err=True)


@state.command("restore")
@click.option("--from", "archive", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("state"),
    show_default=True,
    help="Where to restore it.",
)
@passphrase_option
@click.option("--force", is_flag=True, help="Set an existing state aside (renamed, kept).")
@handle_errors
def state_restore(
    archive: Path, state_dir: Path, passphrase_file: Path | None, force: bool
) -> None:
    """Unpack a backup; refuses a wrong passphrase, a damaged archive, an existing state.

    \b
    Example:
      nomad-build state restore -c examples/bi-sbg.toml --from state.backup
    """
    count = backup_mod.restore(
        archive, state_dir, _passphrase(passphrase_file, confirm=False), force=force
    )
    click.echo(f"{state_dir}: restored {count} files from {archive}", err=True)


@click.command("audit")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("dist"))
@CLUSTER_OPTION
@STATE_OPTION
@JSON_OPTION
@handle_errors
def audit(directory: Path, cluster_file: Path, state_dir: Path | None, as_json: bool) -> None:
    """Open every artifact in DIRECTORY and report each secret in it; exit 1 on a violation.

    \b
    Example:
      nomad-build audit dist/
    """
    report = audit_mod.audit(directory, cluster_file, state_dir)
    if as_json:
        _print_json(report.as_json())
    else:
        for f in report.findings:
            where = f"{f.artifact}:{f.where}" if f.where else f.artifact
            perm = f" mode {f.mode}" if f.mode else ""
            owner = f" owner {f.owner}" if f.owner else ""
            verdict = f"VIOLATION: {f.violation}" if f.violation else "ok"
            click.echo(f"{where}: {f.secret}{perm}{owner}: {verdict}")
        bad = len(report.violations)
        click.echo(
            f"{report.artifacts} artifacts, {len(report.findings)} secrets found, {bad} violations",
            err=True,
        )
    sys.exit(1 if report.violations else 0)


def register(cli: click.Group) -> None:
    """Add the `pki` and `state` groups and `audit` to the main group."""
    for command in (pki, state, audit):
        cli.add_command(command)
