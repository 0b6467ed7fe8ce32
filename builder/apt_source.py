"""The deb822 source a node uses for the cluster's signed apt repository: written by
the repository writer beside the repository, and by the seeds onto the node."""

from __future__ import annotations

from builder.errors import BuildError

__all__ = ["KEYRING_FILE", "KEYRING_PATH", "SOURCES_FILE", "sources_file"]

KEYRING_FILE = "nomad-build-archive-keyring.gpg"
KEYRING_PATH = f"/etc/apt/keyrings/{KEYRING_FILE}"  # where the .sources file expects it
SOURCES_FILE = "nomad-build.sources"


def sources_file(
    *,
    suite: str,
    component: str,
    repo_url: str,
    fingerprint: str | None = None,
    keyring_path: str = KEYRING_PATH,
) -> bytes:
    """The deb822 source nodes install as /etc/apt/sources.list.d/nomad-build.sources.
    Only with the real URL: a placeholder would reach a node and fail there."""
    lines = [
        "# nomad-build: the cluster's per-node configuration packages.",
        f"# Install {KEYRING_FILE} as {keyring_path} (mode 0644)"
        + (f"; key fingerprint {fingerprint}." if fingerprint else "."),
        "# Serve this repository only to the cluster's nodes, over a private network:",
        "# each package holds its node's private key.",
    ]
    url = repo_url.rstrip("/")
    if any(c.isspace() for c in url):
        raise BuildError(f"repository URL has white space: {url!r}")
    lines += [
        "Types: deb",
        f"URIs: {url}",
        f"Suites: {suite}",
        f"Components: {component}",
        f"Signed-By: {keyring_path}",
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")
