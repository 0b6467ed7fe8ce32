"""The certificate authorities of a cluster: Nomad's (the cluster CA, always) and, with
[consul.agent] on, Consul's. Both follow one policy (builder.cert_policy); an Authority
says where its CA and node certificates live in the state, how they are made, and which
packages carry them, so that status, renewal and CA rotation (builder.lifecycle,
builder.rotation) treat the two alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from builder import consul
from builder.cert_policy import ROTATE_CA, CASpec, CertSpec
from builder.model import Cluster, Node
from builder.render import ca_spec, cert_spec
from builder.state import NOMAD_CA, CAFiles, CertFiles, State

__all__ = ["CONSUL", "NOMAD", "Authority", "authorities"]


@dataclass(frozen=True)
class Authority:
    name: str  # "nomad" | "consul" (pki renew --only)
    title: str  # how messages name its CA: "CA", "Consul CA"
    ca_files: CAFiles
    ca_spec: Callable[[Cluster], CASpec]
    cert_spec: Callable[[Cluster, Node], CertSpec]
    cert_files: Callable[[State, str], CertFiles]
    role: Callable[[Cluster, Node], str]
    record: str  # its CA rotation's entry in rotation.json
    rotate: str  # the command that rotates its CA, in backquotes
    # OS -> the versions.json format of the package that carries its files to a node
    # (builder.pipeline.STATE_FORMAT): a rotation stage waits until each was rebuilt.
    formats: Mapping[str, str]


NOMAD = Authority(
    name="nomad",
    title="CA",
    ca_files=NOMAD_CA,
    ca_spec=ca_spec,
    cert_spec=cert_spec,
    cert_files=lambda st, node: st.nomad_cert_files(node),
    role=lambda cluster, node: node.role,
    record="ca",
    rotate=ROTATE_CA,
    formats={"debian": "deb", "openbsd": "openbsd"},
)
CONSUL = Authority(
    name="consul",
    title="Consul CA",
    ca_files=consul.CONSUL_CA,
    ca_spec=consul.ca_spec,
    cert_spec=consul.cert_spec,
    cert_files=lambda st, node: consul.cert_files(node),
    role=consul.role_text,
    record="consul_ca",
    rotate=consul.ROTATE_CA,
    formats={"debian": "consul-deb", "openbsd": "consul-openbsd"},
)


def authorities(cluster: Cluster) -> tuple[Authority, ...]:
    return (NOMAD, CONSUL) if consul.enabled(cluster) else (NOMAD,)
