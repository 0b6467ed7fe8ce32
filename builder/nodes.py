"""The [[nodes]] of a cluster file, each merged from its layers:
[defaults] < [roles.<role>] (a "both" node takes server's and client's) < the node.

Every value is checked in the layer that writes it (builder.settings), so an
error names the line the operator has to fix, not every node that inherits it;
what needs the merged node (the OS, the role, the address family) is checked here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from builder import nomad_schema
from builder.model import ImageSettings, Node, PackageSettings, freeze
from builder.os_profile import OSProfile, profile
from builder.settings import (
    FQDN_MAX,
    LAYER,
    MERGED_TABLES,
    NODE,
    ROLES,
    Reader,
    Table,
    describe,
    parse_ip,
)


def read_layers(
    r: Reader, data: dict[str, Any], nomad_min_version: str
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The [defaults] layer and the [roles.<role>] layers, checked."""
    defaults = _layer(r, data.get("defaults", {}), "defaults", LAYER, nomad_min_version)
    roles_data = data.get("roles", {})
    if not isinstance(roles_data, dict):
        raise r.fail("roles", f"must be a table, not {describe(roles_data)}")
    roles: dict[str, dict[str, Any]] = {}
    for role, layer in roles_data.items():
        if role not in ROLES:
            raise r.fail(f"roles.{role}", f"unknown role (valid: {', '.join(ROLES)})")
        roles[role] = _layer(r, layer, f"roles.{role}", LAYER, nomad_min_version)
    return defaults, roles


def _layer(
    r: Reader, data: Any, where: str, schema: Table, nomad_min_version: str
) -> dict[str, Any]:
    """A [defaults], [roles.<role>] or [[nodes]] table, its values checked where written."""
    layer = r.table(data, where, schema)
    _check_nomad_schema(r, layer, where, nomad_min_version)
    return layer


def _check_nomad_schema(r: Reader, layer: dict[str, Any], where: str, min_version: str) -> None:
    """telemetry and extra hold Nomad configuration: only keys every Nomad release from
    nomad_min_version on knows, and none that nomad-build writes itself."""
    if not layer.get("telemetry") and not layer.get("extra"):
        return  # nothing of Nomad's own here (most nodes)
    telemetry = {"telemetry": layer.get("telemetry", {})}
    problems = nomad_schema.check_config(telemetry, where=where, min_version=min_version)
    extra = layer.get("extra", {})
    problems += nomad_schema.check_extra(extra, where=f"{where}.extra", min_version=min_version)
    if problems:
        raise r.fail("", problems[0])


@dataclass
class NodeContext:
    """What building a node needs of the rest of the cluster file."""

    r: Reader
    domain: str
    packages: PackageSettings
    images: ImageSettings
    defaults: dict[str, Any]
    roles: dict[str, dict[str, Any]]

    def node(self, index: int, data: Any) -> Node:
        where = self._where(index, data)
        _layer(self.r, data, where, NODE, self.packages.nomad_min_version)
        self.r.require(data, where, NODE)
        name, role = data["name"], data["role"]
        s = self._merged(role, data)
        os = profile(s["os"])
        fqdn = f"{name}.{self.domain}"
        if len(fqdn) > FQDN_MAX:
            raise self.r.fail(
                f"{where}.name", f"its FQDN {fqdn!r} is longer than {FQDN_MAX} characters"
            )
        self._check_drivers(where, s, role, os)
        self._check_extra(where, s, role)
        paths = {key: (s.get(key) or getattr(os, key)).rstrip("/") for key in _PATHS}
        return Node(
            key=where,
            name=name,
            role=role,
            os=s["os"],
            fqdn=fqdn,
            **self._addresses(where, s),
            extra_names=tuple(s["extra_names"]),
            node_class=s.get("node_class"),
            meta=MappingProxyType(dict(s["meta"])),
            drivers=tuple(dict.fromkeys(s["drivers"])),
            user=s.get("user") or (os.server_user if role == "server" else "root"),
            config_file=f"{paths['config_dir']}/nomad.hcl",
            **paths,
            log_level=s["log_level"].upper(),
            telemetry=freeze(s["telemetry"]),
            extra=freeze(s["extra"]),
            mac=s["mac"].lower() if s.get("mac") else None,
            deb_package=f"nomad-config-{name}",
            openbsd_stem=f"nomad-config-{openbsd_name(name)}",
            packages=self.packages,
            images=self.images,
        )

    def _where(self, index: int, data: Any) -> str:
        where = f"nodes[{index}]"
        if not isinstance(data, dict):
            raise self.r.fail(where, f"must be a table, not {describe(data)}")
        name = data.get("name")
        if isinstance(name, str):  # an unprintable name is shown quoted: errors stay one line
            where = f"nodes[{index}] ({name if name.isprintable() else repr(name)})"
        return where

    def _merged(self, role: str, data: dict[str, Any]) -> dict[str, Any]:
        """The node's settings: declared defaults < [defaults] < role layers < node."""
        layers = [self.defaults]
        if role == "both":
            layers += [self.roles.get("server", {}), self.roles.get("client", {})]
        layers += [self.roles.get(role, {}), data]
        s: dict[str, Any] = {key: setting.default for key, setting in NODE.settings.items()}
        for layer in layers:
            for key, value in layer.items():
                if key in MERGED_TABLES and isinstance(s.get(key), dict):
                    s[key] = _deep_merge(s[key], value)
                else:
                    s[key] = value
        return s

    def _addresses(self, where: str, s: dict[str, Any]) -> dict[str, Any]:
        """The node's networking fields, each address in its canonical form."""
        address = _canonical(s["address"])
        interface = s.get("interface")
        bind_addr = s.get("bind_addr")
        if bind_addr is None:
            # go-sockaddr template of the interface (the seed's way), else the node's address
            bind_addr = f"{{{{ GetInterfaceIP `{interface}` }}}}" if interface else address
        elif not bind_addr.startswith("{{"):
            bind_addr = _canonical(bind_addr)
        prefix = s.get("prefix")
        if prefix is not None:
            top = 32 if ipaddress.ip_address(address).version == 4 else 128
            if not 1 <= prefix <= top:
                raise self.r.fail(f"{where}.prefix", f"{prefix} is not a prefix length (1..{top})")
        return {
            "address": address,
            "extra_ips": tuple(_canonical(ip) for ip in s["extra_ips"]),
            "interface": interface,
            "bind_addr": bind_addr,
            "advertise": _canonical(s["advertise"]) if s.get("advertise") else None,
            "prefix": prefix,
            "gateway": _canonical(s["gateway"]) if s.get("gateway") else None,
            "nameservers": tuple(_canonical(ip) for ip in s["nameservers"]),
        }

    def _check_drivers(self, where: str, s: dict[str, Any], role: str, os: OSProfile) -> None:
        for d in s["drivers"]:
            if d not in os.drivers:
                raise self.r.fail(f"{where}.drivers", f"the {d} driver does not run on {os.name}")
        if s["drivers"] and role == "server":
            raise self.r.fail(f"{where}.drivers", "a server-only node runs no tasks; drop drivers")

    def _check_extra(self, where: str, s: dict[str, Any], role: str) -> None:
        if role == "server" and ("client" in s["extra"]):
            raise self.r.fail(f"{where}.extra.client", "a server-only node has no client block")
        if role == "client" and ("server" in s["extra"]):
            raise self.r.fail(f"{where}.extra.server", "a client-only node has no server block")


_PATHS = ("config_dir", "tls_dir", "data_dir")


def _canonical(ip: str) -> str:
    return str(parse_ip(ip))


def openbsd_name(name: str) -> str:
    """A node name as it may appear in an OpenBSD package stem.

    pkg_add splits stem and version at the first "-<digit>"; mapping each "-<digit>"
    to "_<digit>" keeps names readable and, as DNS labels never hold "_", stays
    collision-free (bi-core-sbg-1 -> bi-core-sbg_1).
    """
    return re.sub(r"-(?=\d)", "_", name)


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
