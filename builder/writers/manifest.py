"""What a whole build published, for the operator and for tools: dist/manifest.json
(every artifact: path, node, kind, format, version, size, sha256, secret; every node
certificate: node, names, not-after) and dist/SHA256SUMS over every file, signed with
the cluster's signify key as SHA256SUMS.sig (signify's embedded form, so
`signify -C -p <cluster>-pkg.pub -x SHA256SUMS.sig` checks the signature and then
every file).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from builder import signify
from builder.model import Cluster, Node
from builder.nodetree import NodeTree
from builder.pki import inspect_cert
from builder.writers import REGISTRY, Artifact, BuildInputs, Output, Writer, writer

__all__ = ["MANIFEST", "SUMS", "SUMS_SIG", "ManifestWriter", "checksums"]

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
SUMS_SIG = "SHA256SUMS.sig"
SCHEMA_VERSION = 1
# What each writer's artifacts are, as the manifest says it.
_KIND = {
    "deb": ("package", "deb"),
    "openbsd-pkg": ("package", "openbsd"),
    "consul-deb": ("package", "consul-deb"),
    "consul-openbsd-pkg": ("package", "consul-openbsd"),
    "apt-repo": ("repository", "apt"),
    "pkg-repo": ("repository", "openbsd"),
    "cloud-init": ("seed", "cloud-init"),
    "autoinstall": ("seed", "autoinstall"),
    "openbsd-autoinstall": ("seed", "openbsd-autoinstall"),
}


def checksums(files: Sequence[tuple[str, bytes]]) -> bytes:
    """BSD-style `SHA256 (path) = hex` lines, sorted: what `sha256 -r`-less signify -C reads."""
    return "".join(
        f"SHA256 ({path}) = {hashlib.sha256(data).hexdigest()}\n" for path, data in sorted(files)
    ).encode()


def _certificate(tree: NodeTree) -> dict[str, object]:
    """The node's own certificate: the tree's one PEM certificate that is not a CA."""
    certs = [f.content for f in tree.files if f.content.startswith(b"-----BEGIN CERTIFICATE")]
    info = next(i for i in map(inspect_cert, certs) if not i.is_ca)
    return {
        "node": tree.node,
        "common_name": info.subject_cn,
        "dns_names": list(info.dns_names),
        "ip_addresses": list(info.ip_addresses),
        "not_after": info.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def manifest(inputs: BuildInputs) -> bytes:
    entries = []
    for name, _ in REGISTRY:
        kind, fmt = _KIND.get(name, ("other", name))
        for a in inputs.built.get(name, ()):
            key = writer(name).version_key(a.node) if a.node else None
            version = inputs.versions.get(key) if key and kind != "repository" else None
            entries.append(
                {
                    "path": a.path,
                    "node": a.node,
                    "kind": kind,
                    "format": fmt,
                    "version": version if a.path.endswith((".deb", ".tgz")) else None,
                    "size": len(a.data),
                    "sha256": hashlib.sha256(a.data).hexdigest(),
                    "secret": a.secret,
                }
            )
    body = {
        "schema": SCHEMA_VERSION,
        "cluster": inputs.cluster.name,
        "artifacts": sorted(entries, key=lambda e: str(e["path"])),
        "certificates": [_certificate(inputs.trees[n]) for n in sorted(inputs.trees)],
    }
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


class ManifestWriter(Writer):
    """The build's manifest and signed checksums over everything else it published."""

    name = "manifest"  # registered last: it reads everything built before it
    signing = frozenset({"signify"})
    per_node = False
    reads_all = True
    os = "any"

    def unfit(self, cluster: Cluster, node: Node) -> str | None:
        return None

    def outputs(
        self,
        cluster: Cluster,
        nodes: Sequence[Node],
        versions: Mapping[str, int],
        upstream: Sequence[Output] = (),
    ) -> list[Output]:
        return [Output(name, None, secret=False) for name in (MANIFEST, SUMS, SUMS_SIG)]

    def build(self, inputs: BuildInputs, nodes: Sequence[Node]) -> list[Artifact]:
        keys = inputs.keys
        assert keys.signify_secret is not None
        listed = manifest(inputs)
        files = [(a.path, a.data) for arts in inputs.built.values() for a in arts]
        sums = checksums([*files, (MANIFEST, listed)])
        return [
            Artifact(MANIFEST, listed, secret=False),
            Artifact(SUMS, sums, secret=False),
            Artifact(
                SUMS_SIG,
                signify.sign_embedded(keys.signify_secret, sums, key_name=keys.signing_key_name),
                secret=False,
            ),
        ]
