"""Reads a cluster file (TOML) into the immutable model, with every cross-check.

This is the only code that reads the cluster file. Any problem raises
UserError with one line: "<file>: <key path>: <what is wrong>".
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from builder import nomad_schema
from builder.errors import UserError
from builder.model import (
    Bundle,
    Cluster,
    ConsulSettings,
    ImageSettings,
    Node,
    NomadAptSource,
    PackageSettings,
    PKISettings,
)

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DC = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_VERSION = re.compile(r"^\d+(\.\d+){0,2}$")
_IFACE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$")
_PATH = re.compile(r"^/[A-Za-z0-9_./+-]*$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "OFF")
# Task drivers a node may enable, and the OSes they run on.
DRIVERS: dict[str, tuple[str, ...]] = {
    "raw_exec": ("openbsd", "debian"),
    "exec": ("debian",),
    "docker": ("debian",),
    "java": ("debian",),
    "qemu": ("debian",),
}
OS_DEFAULTS: dict[str, dict[str, str]] = {
    # Follow each OS's own Nomad package (REFERENCE.md "Official packaging").
    "openbsd": {
        "config_dir": "/etc/nomad",
        "tls_dir": "/etc/ssl/nomad",
        "data_dir": "/var/nomad",
        "server_user": "_nomad",
    },
    "debian": {
        "config_dir": "/etc/nomad.d",
        "tls_dir": "/etc/nomad.d/tls",
        "data_dir": "/opt/nomad/data",
        "server_user": "nomad",
    },
}


_BCRYPT = re.compile(r"^\$2[ab]\$\d\d\$[./A-Za-z0-9]{53}$")

# ---------------------------------------------------------------- key schema
# Each table of the cluster file: key -> (type name, checker). Unknown keys are errors.
Check = Callable[[Any], str | None]


def _is(t: type | tuple[type, ...], what: str) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) and bool not in (t if isinstance(t, tuple) else (t,)):
            return f"must be {what}, not a boolean"
        return None if isinstance(v, t) else f"must be {what}, not {_describe(v)}"

    return check


def _describe(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(v), type(v).__name__)


STR = _is(str, "a string")
INT = _is(int, "an integer")
BOOL = _is(bool, "a boolean")
TABLE = _is(dict, "a table")


def _list_of_str(v: Any) -> str | None:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        return f"must be a list of strings, not {_describe(v)}"
    return None


STRS = _list_of_str

SECTIONS: dict[str, dict[str, Check]] = {
    "cluster": {
        "name": STR,
        "region": STR,
        "datacenter": STR,
        "domain": STR,
        "bootstrap_expect": INT,
    },
    "pki": {
        "ca_days": INT,
        "cert_days": INT,
        "renew_before_days": INT,
        "backdate_minutes": INT,
        "name_constraints": STRS,
    },
    "consul": {
        "address": STR,
        "server_service_name": STR,
        "client_service_name": STR,
        "auto_advertise": BOOL,
        "server_auto_join": BOOL,
        "client_auto_join": BOOL,
    },
    "packages": {
        "nomad_min_version": STR,
        "maintainer": STR,
        "apt_suite": STR,
        "apt_component": STR,
        "repo_url": STR,
        "signing_key_name": STR,
        "bundle": TABLE,
        "nomad_apt": TABLE,
    },
    "bundle": {"binary": STR, "sha256sums": STR, "version": STR},
    "nomad_apt": {"url": STR, "keyring": STR},
    "images": {
        "admin_user": STR,
        "ssh_keys": STRS,
        "password_hash": STR,
        "openbsd_release": STR,
        "openbsd_sets_url": STR,
        "openbsd_disk": STR,
        "timezone": STR,
    },
}
# Keys that may be set cluster-wide ([defaults]), per role ([roles.<role>]) or per node.
LAYER_KEYS: dict[str, Check] = {
    "os": STR,
    "interface": STR,
    "bind_addr": STR,
    "advertise": STR,
    "extra_ips": STRS,
    "extra_names": STRS,
    "node_class": STR,
    "meta": TABLE,
    "drivers": STRS,
    "user": STR,
    "config_dir": STR,
    "tls_dir": STR,
    "data_dir": STR,
    "log_level": STR,
    "telemetry": TABLE,
    "extra": TABLE,
    "prefix": INT,
    "gateway": STR,
    "nameservers": STRS,
}
NODE_ONLY_KEYS: dict[str, Check] = {"name": STR, "role": STR, "address": STR, "mac": STR}
# Tables merged key by key across layers instead of replaced.
MERGED_TABLES = ("meta", "telemetry", "extra")
TOP_LEVEL = ("cluster", "pki", "consul", "packages", "images", "defaults", "roles", "nodes")
ROLES = ("server", "client", "both")


# ---------------------------------------------------------------- loading
@dataclass
class _Reader:
    source: Path

    def fail(self, key: str, message: str) -> UserError:
        return UserError(f"{self.source}: {key}: {message}" if key else f"{self.source}: {message}")

    def table(self, data: Any, key: str, schema: Mapping[str, Check]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(key, f"must be a table, not {_describe(data)}")
        for name, value in data.items():
            path = f"{key}.{name}" if key else name
            check = schema.get(name)
            if check is None:
                close = _closest(name, schema)
                hint = f"; did you mean {close!r}?" if close else ""
                raise self.fail(path, f"unknown key{hint} (valid: {', '.join(schema)})")
            problem = check(value)
            if problem:
                raise self.fail(path, problem)
        return data


def _layer(
    r: _Reader, data: Any, where: str, schema: Mapping[str, Check], nomad_min_version: str
) -> dict[str, Any]:
    """A [defaults], [roles.<role>] or [[nodes]] table, its values checked where written,
    so an error names the line the operator has to fix, not every node that inherits it."""
    layer = r.table(data, where, schema)
    level = layer.get("log_level")
    if level is not None and level.upper() not in LOG_LEVELS:
        raise r.fail(f"{where}.log_level", f"{level!r} is not one of {LOG_LEVELS}")
    node_class = layer.get("node_class")
    if node_class is not None and not node_class.strip():
        raise r.fail(f"{where}.node_class", "must not be empty")
    for k, v in layer.get("meta", {}).items():
        if not isinstance(v, str):
            raise r.fail(f"{where}.meta.{k}", f"must be a string, not {_describe(v)}")
    # Checked against every Nomad release from nomad_min_version on ([packages] is read first).
    telemetry = {"telemetry": layer.get("telemetry", {})}
    problems = nomad_schema.check_config(telemetry, where=where, min_version=nomad_min_version)
    extra, extra_where = layer.get("extra", {}), f"{where}.extra"
    problems += nomad_schema.check_extra(extra, where=extra_where, min_version=nomad_min_version)
    if problems:
        raise r.fail("", problems[0])
    return layer


def _closest(name: str, candidates: Mapping[str, Any] | tuple[str, ...]) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return found[0] if found else None


def load(path: Path | str) -> Cluster:
    """Read and validate a cluster file. Raises UserError on any problem."""
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{source}: no such cluster file (give one with -c FILE)") from None
    except OSError as e:
        raise UserError(f"{source}: cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{source}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{source}: TOML syntax error: {e}") from None
    return _build(_Reader(source), data)


def _build(r: _Reader, data: dict[str, Any]) -> Cluster:
    for name in data:
        if name not in TOP_LEVEL:
            close = _closest(name, TOP_LEVEL)
            hint = f"; did you mean {close!r}?" if close else ""
            raise r.fail(name, f"unknown table{hint} (valid: {', '.join(TOP_LEVEL)})")
    if "cluster" not in data:
        raise r.fail("cluster", "missing: the [cluster] table (name, region, datacenter, domain)")
    c = r.table(data["cluster"], "cluster", SECTIONS["cluster"])
    for key in ("name", "region", "datacenter", "domain"):
        if key not in c:
            raise r.fail(f"cluster.{key}", "missing (required)")
    name, region, datacenter, domain = c["name"], c["region"], c["datacenter"], c["domain"]
    if not _LABEL.match(name):
        raise r.fail("cluster.name", f"{name!r} is not a DNS label (a-z, 0-9, '-')")
    if not _LABEL.match(region):
        raise r.fail(
            "cluster.region",
            f"{region!r} is not a DNS label; certificates name server.<region>.nomad",
        )
    if not _DC.match(datacenter):
        raise r.fail("cluster.datacenter", f"{datacenter!r}: use letters, digits, '-' or '_'")
    if not _is_dns_name(domain) or domain.endswith(".nomad") or domain == "nomad":
        raise r.fail(
            "cluster.domain", f"{domain!r} is not a DNS domain outside .nomad (e.g. example.org)"
        )

    pki = _pki(r, data.get("pki", {}))
    consul = _consul(r, data.get("consul", {}))
    packages = _packages(r, data.get("packages", {}), name)
    images = _images(r, data.get("images", {}))

    min_version = packages.nomad_min_version
    defaults = _layer(r, data.get("defaults", {}), "defaults", LAYER_KEYS, min_version)
    roles_data = data.get("roles", {})
    if not isinstance(roles_data, dict):
        raise r.fail("roles", f"must be a table, not {_describe(roles_data)}")
    roles: dict[str, dict[str, Any]] = {}
    for role, layer in roles_data.items():
        if role not in ROLES:
            raise r.fail(f"roles.{role}", f"unknown role (valid: {', '.join(ROLES)})")
        roles[role] = _layer(r, layer, f"roles.{role}", LAYER_KEYS, min_version)

    nodes_data = data.get("nodes")
    if nodes_data is None:
        raise r.fail("nodes", "missing: at least one [[nodes]] entry")
    if not isinstance(nodes_data, list) or not nodes_data:
        raise r.fail("nodes", "must be a non-empty array of tables ([[nodes]])")

    ctx = _NodeContext(r, name, region, domain, pki, packages, images, defaults, roles)
    nodes = tuple(ctx.node(i, n) for i, n in enumerate(nodes_data))

    warnings: list[str] = []
    _cross_check(r, nodes, domain, pki)
    pw = images.password_hash
    if pw and any(n.os == "openbsd" for n in nodes) and not _BCRYPT.match(pw):
        raise r.fail(
            "images.password_hash",
            "OpenBSD's installer takes only a bcrypt hash ($2b$, from OpenBSD's `encrypt` "
            "or `mkpasswd -m bcrypt`; Debian and Ubuntu accept it too)",
        )
    servers = [n for n in nodes if n.is_server]
    if not servers:
        raise r.fail("nodes", "no node has role 'server' or 'both': bootstrap_expect would be 0")
    expect = c.get("bootstrap_expect", len(servers))
    if expect != len(servers):
        raise r.fail(
            "cluster.bootstrap_expect",
            f"is {expect} but the file defines {len(servers)} server(s); they must be equal",
        )
    if expect % 2 == 0:
        warnings.append(
            f"{len(servers)} servers: an even number adds no fault tolerance "
            f"over {len(servers) - 1}; use 3 or 5"
        )
    return Cluster(
        source=r.source,
        name=name,
        region=region,
        datacenter=datacenter,
        domain=domain,
        bootstrap_expect=expect,
        pki=pki,
        consul=consul,
        packages=packages,
        images=images,
        nodes=nodes,
        warnings=tuple(warnings),
    )


def _pki(r: _Reader, data: Any) -> PKISettings:
    p = r.table(data, "pki", SECTIONS["pki"])
    for key, low, high in (
        ("ca_days", 1, 36500),
        ("cert_days", 1, 3650),
        ("renew_before_days", 0, 3650),
        ("backdate_minutes", 0, 1440),
    ):
        if key in p and not low <= p[key] <= high:
            raise r.fail(f"pki.{key}", f"{p[key]} is out of range ({low}..{high})")
    extra = tuple(p.get("name_constraints", ()))
    for d in extra:
        if not _is_dns_name(d):
            raise r.fail("pki.name_constraints", f"{d!r} is not a DNS domain")
    settings = PKISettings(
        **{k: v for k, v in p.items() if k != "name_constraints"},
        extra_name_constraints=extra,
    )
    if settings.renew_before_days >= settings.cert_days:
        raise r.fail(
            "pki.renew_before_days",
            f"{settings.renew_before_days} must be shorter than cert_days "
            f"({settings.cert_days}), else every run re-issues",
        )
    return settings


def _consul(r: _Reader, data: Any) -> ConsulSettings:
    c = r.table(data, "consul", SECTIONS["consul"])
    addr = c.get("address")
    if addr is not None and not re.match(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$", addr):
        raise r.fail("consul.address", f"{addr!r} must be host:port, e.g. 127.0.0.1:8500")
    for key in ("server_service_name", "client_service_name"):
        if key in c and not _LABEL.match(c[key]):
            raise r.fail(f"consul.{key}", f"{c[key]!r} is not a valid Consul service name")
    return ConsulSettings(**c)


def _packages(r: _Reader, data: Any, cluster_name: str) -> PackageSettings:
    p = r.table(data, "packages", SECTIONS["packages"])
    if "nomad_min_version" in p and not _VERSION.match(p["nomad_min_version"]):
        raise r.fail("packages.nomad_min_version", f"{p['nomad_min_version']!r} is not like 1.7.0")
    if "maintainer" in p and not re.match(r"^[^<>\n]+ <[^<>@\s]+@[^<>\s]+>$", p["maintainer"]):
        raise r.fail("packages.maintainer", "must look like 'Name <address@example.org>'")
    for key in ("apt_suite", "apt_component"):
        if key in p and not re.match(r"^[a-z0-9][a-z0-9.+-]*$", p[key]):
            raise r.fail(f"packages.{key}", f"{p[key]!r}: lower-case letters, digits, . + -")
    if "repo_url" in p and not re.match(r"^(https?|file)://\S+$", p["repo_url"]):
        raise r.fail("packages.repo_url", f"{p['repo_url']!r} must be an http(s):// or file:// URL")
    key_name = p.get("signing_key_name", f"{cluster_name}-pkg")
    if not re.match(r"^[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*-pkg$", key_name):
        raise r.fail(
            "packages.signing_key_name",
            f"{key_name!r} must end in '-pkg' (pkg_add looks for /etc/signify/*-pkg.pub)",
        )
    bundle = _bundle(r, p["bundle"]) if "bundle" in p else None
    nomad_apt = _nomad_apt(r, p["nomad_apt"]) if "nomad_apt" in p else None
    if bundle is not None and nomad_apt is not None:
        raise r.fail("packages.nomad_apt", "not used with a bundled binary (packages.bundle)")
    fields = {k: v for k, v in p.items() if k not in ("bundle", "nomad_apt", "signing_key_name")}
    return PackageSettings(**fields, signing_key_name=key_name, bundle=bundle, nomad_apt=nomad_apt)


def _nomad_apt(r: _Reader, data: Any) -> NomadAptSource:
    a = r.table(data, "packages.nomad_apt", SECTIONS["nomad_apt"])
    for key in ("url", "keyring"):
        if key not in a:
            raise r.fail(f"packages.nomad_apt.{key}", "missing (required with nomad_apt)")
    if not re.match(r"^(https?|file)://[^\s\]]+$", a["url"]):
        raise r.fail("packages.nomad_apt.url", f"{a['url']!r} must be an http(s):// or file:// URL")
    path = r.source.parent / a["keyring"]
    if not path.is_file():
        raise r.fail("packages.nomad_apt.keyring", f"{path}: no such file")
    keyring = path.read_bytes()
    if not _is_openpgp_public_key(keyring):
        raise r.fail(
            "packages.nomad_apt.keyring",
            f"{path} is not an OpenPGP public key (HashiCorp's, e.g. from "
            "https://apt.releases.hashicorp.com/gpg, armored or dearmored)",
        )
    return NomadAptSource(url=a["url"].rstrip("/"), keyring=keyring)


def _is_openpgp_public_key(data: bytes) -> bool:
    if data.lstrip().startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"):
        return True
    if not data or not data[0] & 0x80:
        return False
    # First packet's tag: old format bits 5-2, new format bits 5-0; 6 = public key.
    tag = data[0] & 0x3F if data[0] & 0x40 else (data[0] >> 2) & 0x0F
    return tag == 6


def _bundle(r: _Reader, data: Any) -> Bundle:
    b = r.table(data, "packages.bundle", SECTIONS["bundle"])
    for key in ("binary", "sha256sums", "version"):
        if key not in b:
            raise r.fail(f"packages.bundle.{key}", "missing (required with a bundle)")
    if not _VERSION.match(b["version"]):
        raise r.fail("packages.bundle.version", f"{b['version']!r} is not like 1.9.3")
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


def _images(r: _Reader, data: Any) -> ImageSettings:
    i = r.table(data, "images", SECTIONS["images"])
    if "admin_user" in i and not _USER.match(i["admin_user"]):
        raise r.fail("images.admin_user", f"{i['admin_user']!r} is not a valid user name")
    for n, key in enumerate(i.get("ssh_keys", ())):
        if not re.match(r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+", key):
            raise r.fail(f"images.ssh_keys[{n}]", "is not an OpenSSH public key line")
    pw = i.get("password_hash")
    if pw is not None and not re.match(r"^\$(1|2[aby]|5|6|y|gy)\$[^\s:]+$", pw):
        raise r.fail(
            "images.password_hash",
            "must be a crypt(3) hash (e.g. from `mkpasswd -m sha-512`), never a plain password",
        )
    if "openbsd_release" in i and not re.match(r"^\d\.\d$", i["openbsd_release"]):
        raise r.fail("images.openbsd_release", f"{i['openbsd_release']!r} is not like 7.8")
    if "openbsd_sets_url" in i and not re.match(r"^https?://\S+$", i["openbsd_sets_url"]):
        raise r.fail("images.openbsd_sets_url", "must be an http(s):// URL")
    fields = {k: v for k, v in i.items() if k != "ssh_keys"}
    return ImageSettings(**fields, ssh_keys=tuple(i.get("ssh_keys", ())))


@dataclass
class _NodeContext:
    r: _Reader
    cluster_name: str
    region: str
    domain: str
    pki: PKISettings
    packages: PackageSettings
    images: ImageSettings
    defaults: dict[str, Any]
    roles: dict[str, dict[str, Any]]

    def node(self, index: int, data: Any) -> Node:
        r = self.r
        where = f"nodes[{index}]"
        if not isinstance(data, dict):
            raise r.fail(where, f"must be a table, not {_describe(data)}")
        if isinstance(data.get("name"), str):
            where = f"nodes[{index}] ({data['name']})"
        keys = {**NODE_ONLY_KEYS, **LAYER_KEYS}
        _layer(r, data, where, keys, self.packages.nomad_min_version)
        for key in ("name", "role", "address"):
            if key not in data:
                raise r.fail(f"{where}.{key}", "missing (required)")
        name, role = data["name"], data["role"]
        if not _LABEL.match(name):
            raise r.fail(
                f"{where}.name", f"{name!r} is not a DNS label (lower-case a-z, 0-9, '-', ≤63)"
            )
        if role not in ROLES:
            raise r.fail(f"{where}.role", f"{role!r} is not one of {', '.join(ROLES)}")

        # defaults < role (both also takes server's and client's layers) < node
        layers = [self.defaults]
        if role == "both":
            layers += [self.roles.get("server", {}), self.roles.get("client", {})]
        layers += [self.roles.get(role, {}), data]
        s: dict[str, Any] = {}
        for layer in layers:
            for key, value in layer.items():
                if key in MERGED_TABLES and isinstance(s.get(key), dict):
                    s[key] = _deep_merge(s[key], value)
                else:
                    s[key] = value

        os_name = s.get("os", "debian")
        if os_name not in OS_DEFAULTS:
            raise r.fail(f"{where}.os", f"{os_name!r} is not one of {', '.join(OS_DEFAULTS)}")
        osd = OS_DEFAULTS[os_name]

        address = self._ip(f"{where}.address", data["address"])
        extra_ips = tuple(self._ip(f"{where}.extra_ips", ip) for ip in s.get("extra_ips", ()))
        extra_names = tuple(s.get("extra_names", ()))
        for n in extra_names:
            if not _is_dns_name(n):
                raise r.fail(f"{where}.extra_names", f"{n!r} is not a DNS name")

        interface = s.get("interface")
        if interface is not None and not _IFACE.match(interface):
            raise r.fail(f"{where}.interface", f"{interface!r} is not an interface name")
        bind_addr = s.get("bind_addr")
        if bind_addr is None:
            # go-sockaddr template of the interface (the seed's way), else the node's address
            bind_addr = f"{{{{ GetInterfaceIP `{interface}` }}}}" if interface else address
        elif not bind_addr.startswith("{{"):
            bind_addr = self._ip(f"{where}.bind_addr", bind_addr, allow_any=True)
        advertise = s.get("advertise")
        if advertise is not None:
            advertise = self._ip(f"{where}.advertise", advertise)

        drivers = tuple(dict.fromkeys(s.get("drivers", ())))
        for d in drivers:
            if d not in DRIVERS:
                raise r.fail(f"{where}.drivers", f"{d!r} is unknown (known: {', '.join(DRIVERS)})")
            if os_name not in DRIVERS[d]:
                raise r.fail(f"{where}.drivers", f"the {d} driver does not run on {os_name}")
        if drivers and role == "server":
            raise r.fail(f"{where}.drivers", "a server-only node runs no tasks; drop drivers")

        user = s.get("user", osd["server_user"] if role == "server" else "root")
        if not _USER.match(user):
            raise r.fail(f"{where}.user", f"{user!r} is not a valid user name")
        paths = {}
        for key in ("config_dir", "tls_dir", "data_dir"):
            value = s.get(key, osd[key])
            if not _PATH.match(value) or "/../" in value + "/" or value == "/":
                raise r.fail(f"{where}.{key}", f"{value!r} must be an absolute path")
            paths[key] = value.rstrip("/")

        # Values were checked in the layer that wrote them (_layer); the merge is valid too.
        log_level = s.get("log_level", "INFO").upper()
        node_class = s.get("node_class")
        meta = s.get("meta", {})
        telemetry = s.get("telemetry", {})
        extra = s.get("extra", {})
        if role == "server" and ("client" in extra):
            raise r.fail(f"{where}.extra.client", "a server-only node has no client block")
        if role == "client" and ("server" in extra):
            raise r.fail(f"{where}.extra.server", "a client-only node has no server block")

        mac = s.get("mac")
        if mac is not None:
            mac = mac.lower()
            if not _MAC.match(mac):
                raise r.fail(f"{where}.mac", f"{s['mac']!r} is not a MAC address like 52:54:00:..")
        prefix = s.get("prefix")
        if prefix is not None:
            top = 32 if ipaddress.ip_address(address).version == 4 else 128
            if not 1 <= prefix <= top:
                raise r.fail(f"{where}.prefix", f"{prefix} is not a prefix length (1..{top})")
        gateway = s.get("gateway")
        if gateway is not None:
            gateway = self._ip(f"{where}.gateway", gateway)
        nameservers = tuple(self._ip(f"{where}.nameservers", n) for n in s.get("nameservers", ()))

        return Node(
            name=name,
            role=role,
            os=os_name,
            fqdn=f"{name}.{self.domain}",
            address=address,
            extra_ips=extra_ips,
            extra_names=extra_names,
            interface=interface,
            bind_addr=bind_addr,
            advertise=advertise,
            node_class=node_class,
            meta=MappingProxyType(dict(meta)),
            drivers=drivers,
            user=user,
            config_dir=paths["config_dir"],
            config_file=f"{paths['config_dir']}/nomad.hcl",
            tls_dir=paths["tls_dir"],
            data_dir=paths["data_dir"],
            log_level=log_level,
            telemetry=_freeze(telemetry),
            extra=_freeze(extra),
            mac=mac,
            prefix=prefix,
            gateway=gateway,
            nameservers=nameservers,
            deb_package=f"nomad-config-{name}",
            openbsd_stem=f"nomad-config-{openbsd_name(name)}",
            packages=self.packages,
            images=self.images,
        )

    def _ip(self, key: str, value: str, *, allow_any: bool = False) -> str:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            raise self.r.fail(key, f"{value!r} is not an IP address") from None
        if ip.is_unspecified and not allow_any:
            raise self.r.fail(key, f"{value!r} is not a usable node address")
        if ip.is_loopback and not allow_any:
            raise self.r.fail(key, f"{value!r} is a loopback address; give the node's own")
        return str(ip)


def openbsd_name(name: str) -> str:
    """A node name as it may appear in an OpenBSD package stem.

    pkg_add splits stem and version at the first "-<digit>"; mapping each "-<digit>"
    to "_<digit>" keeps names readable and, as DNS labels never hold "_", stays
    collision-free (bi-core-sbg-1 -> bi-core-sbg_1).
    """
    return re.sub(r"-(?=\d)", "_", name)


def _cross_check(r: _Reader, nodes: tuple[Node, ...], domain: str, pki: PKISettings) -> None:
    seen_names: dict[str, str] = {}
    seen_ips: dict[str, str] = {}
    seen_stems: dict[str, str] = {}
    permitted = (domain, "nomad", "localhost", *pki.extra_name_constraints)
    for i, n in enumerate(nodes):
        where = f"nodes[{i}] ({n.name})"
        for dns in (n.fqdn, *n.extra_names):
            if dns in seen_names:
                raise r.fail(where, f"name {dns!r} is already used by node {seen_names[dns]}")
            seen_names[dns] = n.name
            if not any(dns == p or dns.endswith("." + p) for p in permitted):
                raise r.fail(
                    f"{where}.extra_names",
                    f"{dns!r} lies outside the CA's name constraints ({', '.join(permitted)}); "
                    "add its domain to pki.name_constraints",
                )
        for ip in n.ips:
            if ip in seen_ips:
                raise r.fail(where, f"IP {ip} is already used by node {seen_ips[ip]}")
            seen_ips[ip] = n.name
        if n.openbsd_stem in seen_stems:
            raise r.fail(
                where,
                f"OpenBSD package {n.openbsd_stem} collides with node {seen_stems[n.openbsd_stem]}",
            )
        seen_stems[n.openbsd_stem] = n.name
        if re.search(r"-\d", n.openbsd_stem):  # would be split by pkg_add as a version
            raise r.fail(where, f"OpenBSD package stem {n.openbsd_stem} contains '-<digit>'")


def _is_dns_name(name: str) -> bool:
    return (
        0 < len(name) <= 253
        and all(_LABEL.match(label) for label in name.split("."))
        and not name.replace(".", "").isdigit()
    )


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A frozen model mapping back into plain dicts/lists (for merging and output)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value
