"""Artifact writers: one module per output format, each a function of
(node, NodeTree, a few build parameters) -> Artifact.

A writer never reads the cluster file, never renders another format's
templates and never writes to disk: the pipeline publishes what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from builder.errors import BuildError

if TYPE_CHECKING:
    from builder.model import Node
    from builder.nodetree import NodeFile, NodeTree


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to dist/, e.g. "debian/nomad-config-bi-core-sbg-1_3_all.deb"
    data: bytes
    secret: bool  # holds a private key (a node key, the gossip key): written 0600

    def __post_init__(self) -> None:
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"artifact path must be relative: {self.path}")


def bundled_binaries(node: Node, tree: NodeTree) -> list[NodeFile]:
    """The tree's Nomad binary files; they exist exactly when the cluster bundles one."""
    binaries = [f for f in tree.files if f.kind == "binary"]
    if node.packages.bundle is not None and not binaries:
        raise BuildError(f"{node.name}: a bundled binary is configured but not in the NodeTree")
    if node.packages.bundle is None and binaries:
        raise BuildError(f"{node.name}: the NodeTree has a binary but no bundle is configured")
    return binaries


def role_text(node: Node) -> str:
    """The node's role as package descriptions say it."""
    return {"server": "server", "client": "client", "both": "server and client"}[node.role]
