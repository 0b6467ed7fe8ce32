"""Every key of the cluster file, declared once: its type, default, checker and help.

The model's dataclass defaults (builder.model) and the loader's checks
(builder.cluster, builder.nodes) both come from these declarations, in the
manner of mkosi's ConfigSetting. A checker sees one value as written and returns
what is wrong with it (or None); rules that need several keys or the whole
cluster live in the loader and in builder.cross_checks.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import UserError
from builder.os_profile import DRIVERS, OPENBSD, PROFILES

LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
BCRYPT = re.compile(r"^\$2[ab]\$\d\d\$[./A-Za-z0-9]{53}\Z")
_DC = re.compile(r"^[A-Za-z0-9_-]{1,63}\Z")
_VERSION = re.compile(r"^\d+(\.\d+){0,2}\Z")
_IFACE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}\Z")
_PATH = re.compile(r"^/[A-Za-z0-9_./+-]*\Z")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
_SSH_KEY = re.compile(r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+")
_CRYPT = re.compile(r"^\$(1|2[aby]|5|6|y|gy)\$[^\s:]+\Z")
_MAINTAINER = re.compile(r"^[^<>\n]+ <[^<>@\s]+@[^<>\s]+>\Z")

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "OFF")
ROLES = ("server", "client", "both")
JOIN_METHODS = ("consul", "static")
TOP_LEVEL = ("cluster", "pki", "consul", "packages", "images", "defaults", "roles", "nodes")
# Tables merged key by key across layers instead of replaced.
MERGED_TABLES = ("meta", "telemetry", "extra")
FQDN_MAX = 253  # RFC 1035: a name of at most 253 characters, labels of at most 63


# ---------------------------------------------------------------- the declaration
@dataclass(frozen=True)
class Problem:
    """What is wrong with part of a value: `suffix` extends the key path ("[2]", ".k")."""

    message: str
    suffix: str = ""


Check = Callable[[Any], "str | Problem | None"]


@dataclass(frozen=True)
class Kind:
    """The TOML type a key takes."""

    what: str  # "a string", "a list of strings"…
    accepts: Callable[[Any], bool]

    def problem(self, value: Any) -> str | None:
        return None if self.accepts(value) else f"must be {self.what}, not {describe(value)}"


STR = Kind("a string", lambda v: isinstance(v, str))
INT = Kind("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
BOOL = Kind("a boolean", lambda v: isinstance(v, bool))
TABLE = Kind("a table", lambda v: isinstance(v, dict))
STRS = Kind(
    "a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)
)


@dataclass(frozen=True)
class Setting:
    key: str
    kind: Kind
    default: Any = None  # when absent; None: optional, or derived (see help)
    check: Check | None = None
    help: str = ""
    required: bool = False
    field: str | None = None  # the model's field, when it is named otherwise

    def problem(self, value: Any) -> Problem | None:
        what = self.kind.problem(value)
        if what is None and self.check is not None:
            found = self.check(value)
            return Problem(found) if isinstance(found, str) else found
        return None if what is None else Problem(what)


class Table:
    """The keys of one table of the cluster file (unknown keys are errors)."""

    def __init__(self, name: str, *settings: Setting, required_note: str = "required") -> None:
        self.name = name
        self.settings = {s.key: s for s in settings}
        self.required_note = required_note  # "missing (<note>)"

    def __getitem__(self, key: str) -> Setting:
        return self.settings[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.settings)

    def __or__(self, other: Table) -> Table:
        return Table(f"{self.name}|{other.name}", *self.settings.values(), *other.settings.values())

    def default(self, key: str) -> Any:
        """The model's default for `key` (the dataclass fields are declared with it)."""
        return self.settings[key].default


def describe(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(v), type(v).__name__)


# ---------------------------------------------------------------- checkers
def matches(pattern: str | re.Pattern[str], message: str) -> Check:
    """`message` is formatted with v (the value)."""
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    return lambda v: None if rx.match(v) else message.format(v=v)


def in_range(low: int, high: int) -> Check:
    return lambda v: None if low <= v <= high else f"{v} is out of range ({low}..{high})"


def each(check: Check, *, indexed: bool = False) -> Check:
    """A list whose every element passes `check`; indexed: name the element's index."""

    def check_all(values: list[Any]) -> str | Problem | None:
        for n, v in enumerate(values):
            found = check(v)
            if found is not None:
                message = found.message if isinstance(found, Problem) else found
                return Problem(message, f"[{n}]" if indexed else "")
        return None

    return check_all


def is_dns_name(name: str) -> bool:
    return (
        0 < len(name) <= FQDN_MAX
        and all(LABEL.match(label) for label in name.split("."))
        and not name.replace(".", "").isdigit()
    )


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@functools.lru_cache(maxsize=1 << 14)  # each address is checked, then written canonically
def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """ipaddress.ip_address, once per distinct string (thousands of nodes)."""
    return ipaddress.ip_address(value)


def address_problem(value: str, *, allow_any: bool = False) -> str | None:
    """What keeps `value` from being a node's own address (None: it is one).
    allow_any: a bind address may be the unspecified one (0.0.0.0: every interface)."""
    if "%" in value:
        return f"{value!r} has a zone index; give an address without %<zone>"
    try:
        ip = parse_ip(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    if ip.is_unspecified and not allow_any:
        return f"{value!r} is not a usable node address"
    if ip.is_loopback and not allow_any:
        return f"{value!r} is a loopback address; give the node's own"
    if ip.is_multicast:
        return f"{value!r} is a multicast address; give the node's own"
    if ip == _BROADCAST:
        return f"{value!r} is the broadcast address; give the node's own"
    return None


def _bind_addr(v: str) -> str | None:
    # a go-sockaddr template of the interface is Nomad's to resolve
    return None if v.startswith("{{") else address_problem(v, allow_any=True)


def _path(v: str) -> str | None:
    if not _PATH.match(v) or "/../" in v + "/" or v == "/":
        return f"{v!r} must be an absolute path"
    return None


def _meta(table: dict[str, Any]) -> Problem | None:
    for k, v in table.items():
        if not isinstance(v, str):
            return Problem(f"must be a string, not {describe(v)}", f".{k}")
    return None


def _dns_domain(v: str) -> str | None:
    return None if is_dns_name(v) else f"{v!r} is not a DNS domain"


def _dns_name(v: str) -> str | None:
    return None if is_dns_name(v) else f"{v!r} is not a DNS name"


def _domain(v: str) -> str | None:
    if not is_dns_name(v) or v.endswith(".nomad") or v == "nomad":
        return f"{v!r} is not a DNS domain outside .nomad (e.g. example.org)"
    return None


def sets_url_problem(url: str) -> str | None:
    """The OpenBSD installer's sets directory must be <mirror>/<release>/<arch>: the
    installer is asked for the server and the directory, and the arch is its last part."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "must be an http(s):// URL"
    if parts.query or parts.fragment or parts.username or parts.password:
        return f"{url!r}: no query, fragment or user"
    directory = parts.path.strip("/")
    if not directory or re.search(r"[\s=]", directory):
        return (
            f"{url!r} must name the sets directory, e.g. http://10.20.130.10/pub/OpenBSD/7.8/amd64"
        )
    if directory.rsplit("/", 1)[-1] not in OPENBSD.arches:
        return (
            f"{url!r} must end in the architecture ({', '.join(OPENBSD.arches)}), "
            "like a mirror's <release>/<arch> directory"
        )
    return None


# ---------------------------------------------------------------- the tables
CLUSTER = Table(
    "cluster",
    Setting(
        "name", STR, None, matches(LABEL, "{v!r} is not a DNS label (a-z, 0-9, '-')"),
        "names the CA and the package signing keys (<name>-pkg)", required=True,
    ),
    Setting(
        "region", STR, None,
        matches(LABEL, "{v!r} is not a DNS label; certificates name server.<region>.nomad"),
        "Nomad region; certificates name server.<region>.nomad", required=True,
    ),
    Setting(
        "datacenter", STR, None, matches(_DC, "{v!r}: use letters, digits, '-' or '_'"),
        "Nomad datacenter", required=True,
    ),
    Setting(
        "domain", STR, None, _domain,
        "DNS domain of the nodes: FQDN = <node name>.<domain>", required=True,
    ),
    Setting(
        "bootstrap_expect", INT, None, None,
        "number of servers (default: the number of nodes with role server or both)",
    ),
    Setting(
        "join", STR, "consul",
        lambda v: None if v in JOIN_METHODS else f"{v!r} is not one of {', '.join(JOIN_METHODS)}",
        "how agents find the servers: consul (Consul's catalog, the seed's way) or static "
        "(server_join.retry_join with the servers' addresses; no Consul needed)",
    ),
)  # fmt: skip

PKI = Table(
    "pki",
    Setting("ca_days", INT, 1825, in_range(1, 36500), "validity of the CA certificate"),
    Setting("cert_days", INT, 365, in_range(1, 3650), "validity of node certificates"),
    Setting(
        "renew_before_days", INT, 30, in_range(0, 3650),
        "re-issue a node certificate this close to its expiry (< cert_days)",
    ),
    Setting(
        "backdate_minutes", INT, 10, in_range(0, 1440),
        "certificates start this long before now (clock skew)",
    ),
    Setting(
        "name_constraints", STRS, (), each(_dns_domain),
        "more DNS domains the CA may sign names in (besides the cluster domain, nomad, localhost)",
        field="extra_name_constraints",
    ),
)  # fmt: skip

_SERVICE_NAME = matches(LABEL, "{v!r} is not a valid Consul service name")
CONSUL = Table(
    "consul",
    Setting(
        "address", STR, "127.0.0.1:8500",
        matches(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$", "{v!r} must be host:port, e.g. 127.0.0.1:8500"),
        "the local Consul agent's HTTP address",
    ),
    Setting("server_service_name", STR, "nomad", _SERVICE_NAME, "Consul service of the servers"),
    Setting(
        "client_service_name", STR, "nomad-client", _SERVICE_NAME, "Consul service of the clients"
    ),
    Setting("auto_advertise", BOOL, True, None, "register Nomad's services in Consul"),
    Setting("server_auto_join", BOOL, True, None, "servers find each other through Consul"),
    Setting("client_auto_join", BOOL, True, None, "clients find the servers through Consul"),
    Setting("agent", TABLE, None, None, "[consul.agent]: nomad-build configures Consul agents too"),
)  # fmt: skip

CONSUL_AGENT = Table(
    "consul.agent",
    Setting(
        "enabled", BOOL, False, None,
        "give every node a Consul agent configuration package (consul-config-<node>)",
    ),
    Setting(
        "servers", STRS, (), each(matches(LABEL, "{v!r} is not a node name"), indexed=True),
        "nodes whose Consul agent is a server; default: Nomad's servers",
    ),
    Setting("dns", BOOL, False, None, "open Consul's DNS port (8600) to the cluster's nodes"),
)  # fmt: skip

_URL = matches(r"^(https?|file)://\S+$", "{v!r} must be an http(s):// or file:// URL")
_APT_NAME = matches(r"^[a-z0-9][a-z0-9.+-]*$", "{v!r}: lower-case letters, digits, . + -")
PACKAGES = Table(
    "packages",
    Setting(
        "nomad_min_version", STR, "1.7.0", matches(_VERSION, "{v!r} is not like 1.7.0"),
        "the packages depend on nomad >= this version",
    ),
    Setting(
        "maintainer", STR, "", matches(_MAINTAINER, "must look like 'Name <address@example.org>'"),
        "Maintainer of the .deb packages; default: 'nomad-build <nomad-build@<cluster domain>>'",
    ),
    Setting("apt_suite", STR, "stable", _APT_NAME, "suite of the apt repository"),
    Setting("apt_component", STR, "main", _APT_NAME, "component of the apt repository"),
    Setting(
        "repo_url", STR, None, _URL, "where nodes find the signed repositories (images use it)"
    ),
    Setting(
        "signing_key_name", STR, "",
        matches(
            r"^[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*-pkg$",
            "{v!r} must end in '-pkg' (pkg_add looks for /etc/signify/*-pkg.pub)",
        ),
        "signify key stem of the OpenBSD packages; default: '<cluster name>-pkg'",
    ),
    Setting("bundle", TABLE, None, None, "[packages.bundle]: ship this Nomad binary"),
    Setting("nomad_apt", TABLE, None, None, "[packages.nomad_apt]: HashiCorp's apt source"),
)  # fmt: skip

BUNDLE = Table(
    "packages.bundle",
    Setting(
        "binary", STR, None, None, "the nomad binary, relative to the cluster file", required=True
    ),
    Setting("sha256sums", STR, None, None, "HashiCorp's SHA256SUMS naming it", required=True),
    Setting(
        "version", STR, None, matches(_VERSION, "{v!r} is not like 1.9.3"),
        "its Nomad version", required=True,
    ),
    required_note="required with a bundle",
)  # fmt: skip

NOMAD_APT = Table(
    "packages.nomad_apt",
    Setting(
        "url", STR, None,
        matches(r"^(https?|file)://[^\s\]]+$", "{v!r} must be an http(s):// or file:// URL"),
        "HashiCorp's apt repository, e.g. https://apt.releases.hashicorp.com", required=True,
    ),
    Setting("keyring", STR, None, None, "its OpenPGP public key file", required=True),
    required_note="required with nomad_apt",
)  # fmt: skip

IMAGES = Table(
    "images",
    Setting(
        "admin_user", STR, "ops", matches(_USER, "{v!r} is not a valid user name"),
        "the login user the images create",
    ),
    Setting(
        "ssh_keys", STRS, (),
        each(matches(_SSH_KEY, "is not an OpenSSH public key line"), indexed=True),
        "its authorized SSH keys",
    ),
    Setting(
        "password_hash", STR, None,
        matches(
            _CRYPT,
            "must be a crypt(3) hash (e.g. from `mkpasswd -m sha-512`), never a plain password",
        ),
        "its password as a crypt(3) hash (bcrypt when a node runs OpenBSD)",
    ),
    Setting(
        "openbsd_release", STR, "7.8", matches(r"^\d\.\d$", "{v!r} is not like 7.8"),
        "the OpenBSD release the installer installs",
    ),
    Setting(
        "openbsd_sets_url", STR, None, sets_url_problem,
        "the HTTP directory of the release's sets, ending in <release>/<arch>",
    ),
    Setting("openbsd_disk", STR, "sd0", None, "the disk OpenBSD installs to"),
    Setting("timezone", STR, "UTC", None, "the nodes' time zone"),
)  # fmt: skip

_IP = address_problem
LAYER = Table(
    "layer",
    Setting(
        "os", STR, "debian",
        lambda v: None if v in PROFILES else f"{v!r} is not one of {', '.join(PROFILES)}",
        "the node's OS (builder/os_profile.py)",
    ),
    Setting(
        "interface", STR, None, matches(_IFACE, "{v!r} is not an interface name"),
        "the cluster network interface (bind_addr template, client network_interface)",
    ),
    Setting(
        "bind_addr", STR, None, _bind_addr,
        "Nomad's bind_addr; default: the interface's address, else the node's address",
    ),
    Setting("advertise", STR, None, _IP, "address advertised for rpc/serf (multi-homed hosts)"),
    Setting("extra_ips", STRS, (), each(_IP), "more addresses of the node (certificate IP SANs)"),
    Setting(
        "extra_names", STRS, (), each(_dns_name),
        "more DNS names of the node (certificate DNS SANs)",
    ),
    Setting(
        "node_class", STR, None, lambda v: None if v.strip() else "must not be empty",
        "Nomad client node_class",
    ),
    Setting("meta", TABLE, {}, _meta, "Nomad client meta (strings)"),
    Setting(
        "drivers", STRS, (),
        each(lambda d: None if d in DRIVERS else f"{d!r} is unknown (known: {', '.join(DRIVERS)})"),
        "task drivers to enable",
    ),
    Setting(
        "user", STR, None, matches(_USER, "{v!r} is not a valid user name"),
        "the service user; default: the OS's nomad user for servers, root otherwise",
    ),
    Setting("config_dir", STR, None, _path, "default: the OS profile's"),
    Setting("tls_dir", STR, None, _path, "default: the OS profile's"),
    Setting("data_dir", STR, None, _path, "default: the OS profile's"),
    Setting(
        "log_level", STR, "INFO",
        lambda v: None if v.upper() in LOG_LEVELS else f"{v!r} is not one of {LOG_LEVELS}",
        "Nomad's log_level",
    ),
    Setting("telemetry", TABLE, {}, None, "Nomad's telemetry block"),
    Setting("extra", TABLE, {}, None, "more Nomad configuration, merged last"),
    Setting("prefix", INT, None, None, "address prefix length for images; default: DHCP"),
    Setting("gateway", STR, None, _IP, "default gateway for images"),
    Setting("nameservers", STRS, (), each(_IP), "DNS servers for images"),
)  # fmt: skip

NODE_ONLY = Table(
    "node",
    Setting(
        "name", STR, None,
        matches(LABEL, "{v!r} is not a DNS label (lower-case a-z, 0-9, '-', ≤63)"),
        "the node's host name (a DNS label)", required=True,
    ),
    Setting(
        "role", STR, None,
        lambda v: None if v in ROLES else f"{v!r} is not one of {', '.join(ROLES)}",
        "server, client or both", required=True,
    ),
    Setting("address", STR, None, _IP, "the node's cluster address", required=True),
    Setting(
        "mac", STR, None,
        lambda v: None if MAC.match(v.lower()) else f"{v!r} is not a MAC address like 52:54:00:..",
        "MAC address of the cluster interface (images match it)",
    ),
)  # fmt: skip
NODE = NODE_ONLY | LAYER


# ---------------------------------------------------------------- applying them
@dataclass
class Reader:
    """Checks tables against their declarations; every failure names file and key."""

    source: Path

    def fail(self, key: str, message: str) -> UserError:
        return UserError(f"{self.source}: {key}: {message}" if key else f"{self.source}: {message}")

    def table(self, data: Any, key: str, schema: Table) -> dict[str, Any]:
        """`data` as a table of `schema`'s keys, each value checked where written."""
        if not isinstance(data, dict):
            raise self.fail(key, f"must be a table, not {describe(data)}")
        for name, value in data.items():
            path = f"{key}.{name}" if key else name
            setting = schema.settings.get(name)
            if setting is None:
                close = closest(name, tuple(schema))
                hint = f"; did you mean {close!r}?" if close else ""
                raise self.fail(path, f"unknown key{hint} (valid: {', '.join(schema)})")
            problem = setting.problem(value)
            if problem is not None:
                raise self.fail(path + problem.suffix, problem.message)
        return data

    def require(self, table: Mapping[str, Any], key: str, schema: Table) -> None:
        """Every required key of `schema` is in `table` (in declaration order)."""
        for name, setting in schema.settings.items():
            if setting.required and name not in table:
                raise self.fail(f"{key}.{name}", f"missing ({schema.required_note})")

    def settings(self, table: Mapping[str, Any], schema: Table) -> dict[str, Any]:
        """The model fields of a checked table (lists as tuples, fields renamed)."""
        out = {}
        for name, value in table.items():
            setting = schema[name]
            out[setting.field or name] = tuple(value) if isinstance(value, list) else value
        return out


def closest(name: str, candidates: tuple[str, ...]) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return found[0] if found else None
