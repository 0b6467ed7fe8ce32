"""Artifact writers: one module per output format, each a function of
(node, NodeTree, a few build parameters) -> Artifact.

A writer never reads the cluster file, never renders another format's
templates and never writes to disk: the pipeline publishes what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to dist/, e.g. "debian/nomad-config-bi-core-sbg-1_3_all.deb"
    data: bytes
    secret: bool  # holds a private key (a node key, the gossip key): written 0600

    def __post_init__(self) -> None:
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"artifact path must be relative: {self.path}")
