"""Rules across the nodes of a cluster: unique names, addresses, MACs and package
names; names inside the CA's name constraints; the servers and bootstrap_expect.

Each failure names the node that breaks the rule (the later of two that collide).
"""

from __future__ import annotations

import re

from builder.model import ImageSettings, Node, PKISettings
from builder.settings import BCRYPT, Reader


def check(
    r: Reader, nodes: tuple[Node, ...], domain: str, pki: PKISettings, images: ImageSettings
) -> None:
    permitted = (domain, "nomad", "localhost", *pki.extra_name_constraints)
    seen_names: dict[str, str] = {}
    seen_ips: dict[str, str] = {}
    seen_macs: dict[str, str] = {}
    seen_stems: dict[str, str] = {}
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
        if n.mac is not None:
            if n.mac in seen_macs:
                raise r.fail(f"{where}.mac", f"{n.mac} is already used by node {seen_macs[n.mac]}")
            seen_macs[n.mac] = n.name
        _check_stem(r, where, n, seen_stems)
    _check_password(r, nodes, images)


def _check_stem(r: Reader, where: str, n: Node, seen_stems: dict[str, str]) -> None:
    if n.openbsd_stem in seen_stems:
        raise r.fail(
            where,
            f"OpenBSD package {n.openbsd_stem} collides with node {seen_stems[n.openbsd_stem]}",
        )
    seen_stems[n.openbsd_stem] = n.name
    if re.search(r"-\d", n.openbsd_stem):  # would be split by pkg_add as a version
        raise r.fail(where, f"OpenBSD package stem {n.openbsd_stem} contains '-<digit>'")


def _check_password(r: Reader, nodes: tuple[Node, ...], images: ImageSettings) -> None:
    pw = images.password_hash
    if pw and any(n.os == "openbsd" for n in nodes) and not BCRYPT.match(pw):
        raise r.fail(
            "images.password_hash",
            "OpenBSD's installer takes only a bcrypt hash ($2b$, from OpenBSD's `encrypt` "
            "or `mkpasswd -m bcrypt`; Debian and Ubuntu accept it too)",
        )


def servers(
    r: Reader, nodes: tuple[Node, ...], bootstrap_expect: int | None
) -> tuple[int, tuple[str, ...]]:
    """(bootstrap_expect, warnings): it must count the servers; an even count is a warning."""
    count = sum(1 for n in nodes if n.is_server)
    if not count:
        raise r.fail("nodes", "no node has role 'server' or 'both': bootstrap_expect would be 0")
    expect = count if bootstrap_expect is None else bootstrap_expect
    if expect != count:
        raise r.fail(
            "cluster.bootstrap_expect",
            f"is {expect} but the file defines {count} server(s); they must be equal",
        )
    warnings: list[str] = []
    if expect % 2 == 0:
        warnings.append(
            f"{count} servers: an even number adds no fault tolerance over {count - 1}; use 3 or 5"
        )
    return expect, tuple(warnings)
