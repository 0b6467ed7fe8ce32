"""NodeTree: the files (and directories) that must exist on one node.

Recipes + templates + secrets produce it (builder.render); artifact writers
consume it. It knows nothing of .deb, OpenBSD packages or images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

# "trust": a public key the node's OS trusts (the apt keyring, a signify key): the agent
# never reads it, so a change to it alone restarts nothing.
FileKind = Literal["config", "secret", "unit", "script", "firewall", "binary", "trust"]


@dataclass(frozen=True)
class NodeFile:
    path: str  # absolute path on the node, e.g. "/etc/nomad/nomad.hcl"
    content: bytes
    mode: int  # e.g. 0o644; secrets 0o600
    owner: str  # user name on the node ("root", "_nomad", "nomad")
    group: str  # group name on the node ("root", "wheel", "_nomad")
    kind: FileKind

    @property
    def is_secret(self) -> bool:
        return self.kind == "secret"

    @property
    def is_tls(self) -> bool:
        """A certificate or key (PEM): Nomad reloads these on SIGHUP, so a package whose
        only changes are such files reloads the agent on upgrade instead of restarting."""
        return self.content.startswith(b"-----BEGIN ")


@dataclass(frozen=True)
class NodeDir:
    """A directory the node needs that no file creates (the data dir)."""

    path: str
    mode: int
    owner: str
    group: str


@dataclass(frozen=True)
class ServiceAccount:
    """The user the agent runs as. create=False for root (clients by default)."""

    user: str
    group: str
    create: bool
    uid: int | None = None  # OpenBSD port's _nomad is 819; None lets the OS pick
    gid: int | None = None
    home: str = "/nonexistent"
    extra_groups: tuple[str, ...] = ()  # e.g. ("docker",) when the docker driver is on


@dataclass(frozen=True)
class Service:
    """How the node's OS runs the agent.

    name: the systemd unit name without ".service" (Debian) or the rc.d
    script name (OpenBSD). unit_path: where the NodeTree puts that unit/script.
    config_path: the file or directory given to `nomad agent -config`.
    """

    name: str
    unit_path: str
    config_path: str
    data_dir: str
    account: ServiceAccount


@dataclass(frozen=True)
class NodeTree:
    node: str  # node name
    os: str  # "debian" | "openbsd"
    service: Service
    files: tuple[NodeFile, ...]  # sorted by path
    dirs: tuple[NodeDir, ...] = field(default=())
    # Files an installer must not overwrite once the admin edited them
    # (Debian conffiles are every /etc file anyway; OpenBSD uses @sample).
    notes: tuple[str, ...] = field(default=())  # human instructions (e.g. load the pf anchor)

    def file(self, path: str) -> NodeFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    @property
    def secrets(self) -> tuple[NodeFile, ...]:
        return tuple(f for f in self.files if f.is_secret)

    def digest(self) -> str:
        """SHA-256 over everything that lands on the node; a changed byte changes it.

        Package versions are bumped when this changes.
        """
        h = hashlib.sha256()

        def put(*parts: object) -> None:
            for p in parts:
                b = p if isinstance(p, bytes) else str(p).encode()
                h.update(len(b).to_bytes(8, "big"))
                h.update(b)

        put(self.node, self.os, repr(self.service))
        for f in self.files:
            put(f.path, f.mode, f.owner, f.group, f.kind, f.content)
        for d in self.dirs:
            put(d.path, d.mode, d.owner, d.group)
        for n in self.notes:
            put(n)
        return h.hexdigest()
