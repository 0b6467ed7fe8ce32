"""Reads a cluster file (TOML) into the immutable model.

This is the only code that reads the cluster file. Any problem raises
UserError with one line: "<file>: <key path>: <what is wrong>".

The keys and their checks are declared in builder.settings; the [[nodes]] and
their layers (defaults < roles < node) are built in builder.nodes; the rules
across nodes live in builder.cross_checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from builder import cross_checks, openpgp
from builder.errors import UserError
from builder.model import (
    Bundle,
    Cluster,
    ConsulAgentSettings,
    ConsulSettings,
    ImageSettings,
    Node,
    NomadAptSource,
    PackageSettings,
    PKISettings,
)
from builder.nodes import NodeContext, openbsd_name, read_layers
from builder.os_profile import profile
from builder.settings import (
    BUNDLE,
    CLUSTER,
    CONSUL,
    CONSUL_AGENT,
    IMAGES,
    NOMAD_APT,
    PACKAGES,
    PKI,
    TOP_LEVEL,
    Reader,
    closest,
)

__all__ = ["load", "openbsd_name"]

MAX_BYTES = 1024 * 1024  # a cluster file of 1,000 nodes is ~100 KiB


def load(path: Path | str) -> Cluster:
    """Read and validate a cluster file. Raises UserError on any problem."""
    source = Path(path)
    raw = read_cluster_file(source)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{source}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{source}: TOML syntax error: {e}") from None
    return _build(Reader(source), data)


def read_cluster_file(source: Path) -> bytes:
    """The file's bytes, refusing what cannot be a cluster file without reading it
    all: a directory, an empty or binary file, or one larger than MAX_BYTES (so
    /dev/zero is one read of MAX_BYTES + 1, not the memory of the machine)."""
    try:
        if stat.S_ISDIR(source.stat().st_mode):
            raise UserError(f"{source}: is a directory, not a cluster file")
        # O_NONBLOCK: a FIFO without a writer reads as empty instead of hanging
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if source.is_symlink():
            target = os.readlink(source)
            raise UserError(
                f"{source}: a symbolic link to {target}, which does not exist"
            ) from None
        raise UserError(f"{source}: no such cluster file (give one with -c FILE)") from None
    except OSError as e:
        raise UserError(f"{source}: cannot read: {e.strerror}") from None
    try:
        os.set_blocking(fd, True)
        raw = _read_at_most(fd, MAX_BYTES + 1)
    except OSError as e:
        raise UserError(f"{source}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_BYTES:
        raise UserError(f"{source}: larger than {MAX_BYTES >> 20} MiB: not a cluster file")
    if not raw.strip():
        raise UserError(f"{source}: is empty (a cluster file needs [cluster] and [[nodes]])")
    if b"\0" in raw:
        raise UserError(f"{source}: holds NUL bytes: a binary file, not a TOML cluster file")
    return raw


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _build(r: Reader, data: dict[str, Any]) -> Cluster:
    for name in data:
        if name not in TOP_LEVEL:
            close = closest(name, TOP_LEVEL)
            hint = f"; did you mean {close!r}?" if close else ""
            raise r.fail(name, f"unknown table{hint} (valid: {', '.join(TOP_LEVEL)})")
    if "cluster" not in data:
        raise r.fail("cluster", "missing: the [cluster] table (name, region, datacenter, domain)")
    c = r.table(data["cluster"], "cluster", CLUSTER)
    r.require(c, "cluster", CLUSTER)
    pki = _pki(r, data.get("pki", {}))
    consul = _consul(r, data.get("consul", {}), c.get("join", CLUSTER.default("join")))
    packages = _packages(r, data.get("packages", {}), c)
    images = ImageSettings(**r.settings(r.table(data.get("images", {}), "images", IMAGES), IMAGES))
    defaults, roles = read_layers(r, data, packages.nomad_min_version)
    nodes = _nodes(r, data, NodeContext(r, c["domain"], packages, images, defaults, roles))
    if "agent" in data.get("consul", {}):
        agent = _consul_agent(r, data["consul"]["agent"], nodes)
        consul = dataclasses.replace(consul, agent=agent)
    cross_checks.check(r, nodes, c["domain"], pki, images)
    if "maintainer" not in data.get("packages", {}):
        _check_default_maintainer(r, nodes, c["domain"])
    expect, warnings = cross_checks.servers(r, nodes, c.get("bootstrap_expect"))
    return Cluster(
        source=r.source,
        name=c["name"],
        region=c["region"],
        datacenter=c["datacenter"],
        domain=c["domain"],
        bootstrap_expect=expect,
        pki=pki,
        consul=consul,
        packages=packages,
        images=images,
        nodes=nodes,
        warnings=warnings,
        join=c.get("join", CLUSTER.default("join")),
    )


def _consul(r: Reader, data: Any, join: str) -> ConsulSettings:
    table = r.table(data, "consul", CONSUL)
    fields = r.settings(table, CONSUL)
    fields.pop("agent", None)  # [consul.agent] needs the nodes: _consul_agent
    if join == "static":
        # the servers are named in server_join; Consul's catalog is not asked
        for key in ("server_auto_join", "client_auto_join"):
            if table.get(key) is True:
                raise r.fail(
                    f"consul.{key}",
                    'true contradicts cluster.join = "static" (remove it, or join = "consul")',
                )
            fields[key] = False
    return ConsulSettings(**fields)


def _consul_agent(r: Reader, data: Any, nodes: tuple[Node, ...]) -> ConsulAgentSettings:
    a = r.table(data, "consul.agent", CONSUL_AGENT)
    fields = r.settings(a, CONSUL_AGENT)
    names = [n.name for n in nodes]
    servers = fields.get("servers") or tuple(n.name for n in nodes if n.is_server)
    for i, name in enumerate(servers):
        if name not in names:
            raise r.fail(f"consul.agent.servers[{i}]", f"{name!r} is not a node of the cluster")
    if len(set(servers)) != len(servers):
        raise r.fail("consul.agent.servers", "names a node twice")
    fields["servers"] = tuple(servers)
    return ConsulAgentSettings(**fields)


def _nodes(r: Reader, data: dict[str, Any], ctx: NodeContext) -> tuple[Node, ...]:
    nodes_data = data.get("nodes")
    if nodes_data is None:
        raise r.fail("nodes", "missing: at least one [[nodes]] entry")
    if not isinstance(nodes_data, list) or not nodes_data:
        raise r.fail("nodes", "must be a non-empty array of tables ([[nodes]])")
    return tuple(ctx.node(i, n) for i, n in enumerate(nodes_data))


def _pki(r: Reader, data: Any) -> PKISettings:
    settings = PKISettings(**r.settings(r.table(data, "pki", PKI), PKI))
    if settings.renew_before_days >= settings.cert_days:
        raise r.fail(
            "pki.renew_before_days",
            f"{settings.renew_before_days} must be shorter than cert_days "
            f"({settings.cert_days}), else every run re-issues",
        )
    return settings


def default_maintainer(domain: str) -> str:
    """The .deb Maintainer when packages.maintainer is not set: an address in the
    cluster's own domain (lintian refuses root@localhost and the like)."""
    return f"nomad-build <nomad-build@{domain}>"


def _check_default_maintainer(r: Reader, nodes: tuple[Node, ...], domain: str) -> None:
    # lintian's bogus-mail-host: a mail host needs a dot (no single-label domains)
    if "." not in domain and any(profile(n.os).package_format == "deb" for n in nodes):
        raise r.fail(
            "packages.maintainer",
            f"missing, and the default {default_maintainer(domain)!r} is no mail address "
            "lintian accepts (a one-label domain); set it, e.g. 'Ops <ops@example.org>'",
        )


def _packages(r: Reader, data: Any, c: dict[str, Any]) -> PackageSettings:
    p = r.table(data, "packages", PACKAGES)
    bundle = _bundle(r, p["bundle"]) if "bundle" in p else None
    nomad_apt = _nomad_apt(r, p["nomad_apt"]) if "nomad_apt" in p else None
    if bundle is not None and nomad_apt is not None:
        raise r.fail("packages.nomad_apt", "not used with a bundled binary (packages.bundle)")
    fields = r.settings(p, PACKAGES)
    fields.setdefault("signing_key_name", f"{c['name']}-pkg")
    fields.setdefault("maintainer", default_maintainer(c["domain"]))
    return PackageSettings(**{**fields, "bundle": bundle, "nomad_apt": nomad_apt})


def _nomad_apt(r: Reader, data: Any) -> NomadAptSource:
    a = r.table(data, "packages.nomad_apt", NOMAD_APT)
    r.require(a, "packages.nomad_apt", NOMAD_APT)
    path = r.source.parent / a["keyring"]
    if not path.is_file():
        raise r.fail("packages.nomad_apt.keyring", f"{path}: no such file")
    keyring = path.read_bytes()
    if not openpgp.is_public_key(keyring):
        raise r.fail(
            "packages.nomad_apt.keyring",
            f"{path} is not an OpenPGP public key (HashiCorp's, e.g. from "
            "https://apt.releases.hashicorp.com/gpg, armored or dearmored)",
        )
    return NomadAptSource(url=a["url"].rstrip("/"), keyring=keyring)


def _bundle(r: Reader, data: Any) -> Bundle:
    b = r.table(data, "packages.bundle", BUNDLE)
    r.require(b, "packages.bundle", BUNDLE)
    base = r.source.parent
    binary, sums = base / b["binary"], base / b["sha256sums"]
    for key, p in (("binary", binary), ("sha256sums", sums)):
        if not p.is_file():
            raise r.fail(f"packages.bundle.{key}", f"{p}: no such file")
    wanted = None
    for line in sums.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") in (binary.name, f"./{binary.name}"):
            wanted = parts[0].lower()
    if wanted is None:
        raise r.fail("packages.bundle.sha256sums", f"{sums} has no line for {binary.name}")
    actual = hashlib.sha256(binary.read_bytes()).hexdigest()
    if actual != wanted:
        raise r.fail(
            "packages.bundle.binary",
            f"{binary}: SHA-256 {actual} does not match {sums} ({wanted})",
        )
    return Bundle(binary=binary, sha256sums=sums, version=b["version"], sha256=actual)
