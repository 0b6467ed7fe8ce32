"""The seed's bug: certificates for one region, a config for another. Refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from builder.cluster import load
from builder.errors import BuildError
from builder.render import NodeSecrets, node_secrets, render_tree
from builder.state import State

from conftest import write_cluster


def test_config_and_certificate_name_the_same_region(tmp_path: Path) -> None:
    cluster = load(write_cluster(tmp_path))
    node = cluster.node("bi-core-sbg-1")
    with State.open(tmp_path / "state", create=True) as st:
        secrets = node_secrets(cluster, node, st)
    tree = render_tree(cluster, node, secrets)
    assert b'region = "eu"' in tree.file("/etc/nomad/nomad.hcl").content

    # Same secrets, config for another region: must refuse, naming the missing name.
    other = replace(cluster, region="global")
    with pytest.raises(BuildError, match=r"lacks server\.global\.nomad.*region 'global'"):
        render_tree(other, node, secrets)


def test_region_change_reissues_certificates(tmp_path: Path) -> None:
    path = write_cluster(tmp_path)
    cluster = load(path)
    node = cluster.node("bi-node-sbg-1")
    with State.open(tmp_path / "state", create=True) as st:
        first: NodeSecrets = node_secrets(cluster, node, st)
    path.write_text(path.read_text().replace('region = "eu"', 'region = "us"'))
    moved = load(path)
    with State.open(tmp_path / "state", create=True) as st:
        second = node_secrets(moved, moved.node("bi-node-sbg-1"), st)
        reasons = [e.reason for e in st.events if e.what == "certificate bi-node-sbg-1"]
    assert second.node_cert != first.node_cert
    assert reasons and "client.us.nomad" in reasons[0]
    render_tree(moved, moved.node("bi-node-sbg-1"), second)  # consistent again
