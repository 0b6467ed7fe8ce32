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


def checksums(digests: Mapping[str, str]) -> bytes:
    """BSD-style `SHA256 (path) = hex` lines, sorted: what `sha256 -r`-less signify -C
    reads; `digests`: path -> sha256 hex."""
    return "".join(f"SHA256 ({path}) = {digests[path]}\n" for path in sorted(digests)).encode()


def _lines(items: Sequence[object]) -> str:
    """A JSON array, one item per line (each written by the C encoder: thousands)."""
    if not items:
        return "[]"
    return "[\n  " + ",\n  ".join(json.dumps(i, sort_keys=True) for i in items) + "\n ]"


def _certificate(node: str, pem: bytes) -> dict[str, object]:
    info = inspect_cert(pem)
    return {
        "node": node,
        "common_name": info.subject_cn,
        "dns_names": list(info.dns_names),
        "ip_addresses": list(info.ip_addresses),
        "not_after": info.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def manifest(inputs: BuildInputs, digests: Mapping[str, str]) -> bytes:
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
                    "sha256": digests[a.path],
                    "secret": a.secret,
                }
            )
    entries.sort(key=lambda e: str(e["path"]))
    certificates = [_certificate(n, inputs.certificates[n]) for n in sorted(inputs.trees)]
    return (
        f'{{\n "artifacts": {_lines(entries)},\n "certificates": {_lines(certificates)},\n'
        f' "cluster": {json.dumps(inputs.cluster.name)},\n "schema": {SCHEMA_VERSION}\n}}\n'
    ).encode()


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
        digests = {a.path: inputs.sha256(a) for arts in inputs.built.values() for a in arts}
        listed = manifest(inputs, digests)
        sums = checksums({**digests, MANIFEST: hashlib.sha256(listed).hexdigest()})
        return [
            Artifact(MANIFEST, listed, secret=False),
            Artifact(SUMS, sums, secret=False),
            Artifact(
                SUMS_SIG,
                signify.sign_embedded(keys.signify_secret, sums, key_name=keys.signing_key_name),
                secret=False,
            ),
        ]
