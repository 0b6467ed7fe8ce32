"""The OpenBSD package directory: repo/openbsd/, usable as PKG_PATH or over HTTP.

- the packages themselves (<stem>-<version>.tgz, signed): each node's
  nomad-config package and, with [consul.agent] on, its consul-config one;
- index.html: one ``<a href="<pkg>.tgz">`` per line, the form every pkg_add
  version's HTTP listing parser accepts (OpenBSD::PackageRepository
  get_http_list: ``<A\\s+HREF="(.*?\\.tgz)">``, line by line, case-insensitive;
  newer ones also allow other attributes);
- SHA256: ``SHA256 (<file>) = <base64>`` lines sorted, what ``pkg_sign -C``
  appends (it runs ``sha256 -b``), checkable with ``signify -C``;
- <key_name>.pub: the signify public key, to install as /etc/signify/<key_name>.pub.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Mapping, Sequence

from builder import signify
from builder.errors import BuildError
from builder.model import Cluster, Node
from builder.openbsd_names import package_file_name
from builder.writers import Artifact, BuildInputs, Output, Writer

__all__ = ["REPO_DIR", "PkgRepoWriter", "build_pkg_repo"]

REPO_DIR = "repo/openbsd"


def build_pkg_repo(
    pkgs: list[Artifact],
    *,
    pub_key: bytes | None,
    key_name: str,
    signing_key: bytes | None = None,
) -> list[Artifact]:
    """repo/openbsd/: the packages, index.html, SHA256 (+ SHA256.sig, signify's embedded
    form, when a signing key is given) and <key_name>.pub (when signed)."""
    by_name: dict[str, Artifact] = {}
    for a in pkgs:
        name = package_file_name(a.path)
        if name in by_name:
            raise BuildError(f"two packages named {name}")
        by_name[name] = a
    names = sorted(by_name)

    out = [
        Artifact(f"{REPO_DIR}/{n}", by_name[n].data, by_name[n].secret, by_name[n].node)
        for n in names
    ]
    sums = "".join(
        f"SHA256 ({n}) = {base64.b64encode(hashlib.sha256(by_name[n].data).digest()).decode()}\n"
        for n in names
    )
    extra = ["SHA256"]
    if pub_key is not None:
        extra.append(f"{key_name}.pub")
        out.append(Artifact(f"{REPO_DIR}/{key_name}.pub", pub_key, secret=False))
    out.append(Artifact(f"{REPO_DIR}/SHA256", sums.encode(), secret=False))
    if signing_key is not None:  # signify -C -p <key_name>.pub -x SHA256.sig
        extra.append("SHA256.sig")
        signed = signify.sign_embedded(signing_key, sums.encode(), key_name=key_name)
        out.append(Artifact(f"{REPO_DIR}/SHA256.sig", signed, secret=False))
    out.append(Artifact(f"{REPO_DIR}/index.html", _index(names, extra), secret=False))
    return out


def _index(names: list[str], extra: list[str]) -> bytes:
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "<head><title>nomad-build OpenBSD packages</title></head>",
        "<body>",
        "<h1>nomad-build OpenBSD packages</h1>",
        "<pre>",
    ]
    # One link per line and nothing between <a and href: the oldest parser's form.
    lines += [f'<a href="{html.escape(n)}">{html.escape(n)}</a>' for n in names]
    lines += ["</pre>", "<p>"]
    lines += [f'<a href="{html.escape(n)}">{html.escape(n)}</a><br>' for n in extra]
    lines += ["</p>", "</body>", "</html>"]
    return ("\n".join(lines) + "\n").encode()


class PkgRepoWriter(Writer):
    """The OpenBSD package directory: every OpenBSD node's package (and its Consul agent
    package, consul-config-<stem>, when [consul.agent] is on), index and key."""

    name = "pkg-repo"
    os = "openbsd"
    needs = ("openbsd-pkg", "consul-openbsd-pkg")
    signing = frozenset({"signify"})
    per_node = False

    def unfit(self, cluster: Cluster, node: Node) -> str | None:
        return None if node.os == "openbsd" else f"node {node.name} runs {node.os}, not OpenBSD"

    def outputs(
        self,
        cluster: Cluster,
        nodes: Sequence[Node],
        versions: Mapping[str, int],
        upstream: Sequence[Output] = (),
    ) -> list[Output]:
        pkgs = [o for o in upstream if o.node in {n.name for n in nodes}]
        if not pkgs:
            return []
        key = cluster.packages.signing_key_name
        out = [Output(f"{REPO_DIR}/{package_file_name(o.path)}", o.node, o.secret) for o in pkgs]
        shared = ["SHA256", "SHA256.sig", "index.html", f"{key}.pub"]
        return out + [Output(f"{REPO_DIR}/{name}", None, secret=False) for name in shared]

    def build(self, inputs: BuildInputs, nodes: Sequence[Node]) -> list[Artifact]:
        pkgs = [inputs.package_of("openbsd-pkg", n) for n in nodes]
        consul = [inputs.package_if_built("consul-openbsd-pkg", n) for n in nodes]
        pkgs += [a for a in consul if a is not None]
        if not pkgs:
            return []
        keys = inputs.keys
        return build_pkg_repo(
            pkgs,
            pub_key=keys.signify_public,
            key_name=keys.signing_key_name,
            signing_key=keys.signify_secret,
        )
