"""What the operator does after a build: where to serve the repositories, the lines that
install a node, and which published files hold secrets. Pure text from the model and
the artifacts; the CLI prints it."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import Path

from builder.model import Cluster
from builder.writers import Artifact


def _secret_dirs(artifacts: Sequence[Artifact]) -> list[str]:
    """The directories (or files at the top) holding secret-bearing artifacts."""
    places = {posixpath.dirname(a.path) or a.path for a in artifacts if a.secret}
    return sorted(places)


def next_steps(
    cluster: Cluster, out: Path, state: Path, artifacts: Sequence[Artifact]
) -> list[str]:
    lines = ["next steps:"]
    url = cluster.packages.repo_url
    served = url or "<the URL in packages.repo_url>"
    oses = {n.os for n in cluster.nodes}
    if "debian" in oses:
        lines += [
            f"  serve {out}/repo/debian/ at {served} (private network only: packages hold keys)",
            "  on a Debian node: install "
            f"{out}/repo/debian/nomad-build-archive-keyring.gpg as "
            "/etc/apt/keyrings/nomad-build-archive-keyring.gpg"
            + (
                f" and {out}/repo/debian/nomad-build.sources in /etc/apt/sources.list.d/"
                if url
                else ""
            ),
            "    then: apt update && apt install nomad-config-<node>"
            f"   (or: apt install ./{out}/debian/nomad-config-<node>_<n>_<arch>.deb)",
        ]
    if "openbsd" in oses:
        name = cluster.packages.signing_key_name
        lines += [
            f"  serve {out}/repo/openbsd/ to the OpenBSD nodes (private network only)",
            f"  on an OpenBSD node: install {name}.pub as /etc/signify/{name}.pub (the "
            "autoinstall site set does it), then:",
            "    PKG_PATH=<where repo/openbsd/ is served> pkg_add nomad-config-<stem>",
        ]
    secret = _secret_dirs(artifacts)
    if secret:
        lines.append(
            "  files holding node keys (0600; never on a public mirror): "
            + ", ".join(f"{out}/{d}/" for d in secret)
        )
    key = Path(state).resolve() / f"{cluster.packages.signing_key_name}.pub"
    lines.append(f"  verify what you publish: cd {out} && signify -C -p {key} -x SHA256SUMS.sig")
    return lines
