"""The writer registry: every registered writer's declared outputs are exactly what its
build produces, for the example (OpenBSD) cluster and a Debian one; `check`'s secret
listing comes from those declarations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder import pipeline
from builder.writers import REGISTRY, all_writers

from conftest import nomad_env, write_cluster

IMAGES = '\n[images]\nopenbsd_sets_url = "http://10.20.130.1/pub/OpenBSD/7.8/amd64"\n'


def test_the_registry_lists_each_writer_once_after_what_it_needs() -> None:
    names = [name for name, _ in REGISTRY]
    assert names[-1] == "manifest"  # it lists everything built before it
    assert len(set(names)) == len(names)
    for w in all_writers():
        assert w.name in names
        for need in w.needs:
            assert names.index(need) < names.index(w.name), (w.name, need)


CONSUL = "\n[consul.agent]\nenabled = true\n\n[packages]"


@pytest.mark.parametrize("consul", [False, True], ids=["nomad", "consul-agent"])
@pytest.mark.parametrize("os_name", ["openbsd", "debian"])
def test_declared_outputs_are_what_build_makes(tmp_path: Path, os_name: str, consul: bool) -> None:
    cluster = write_cluster(tmp_path, os_name)
    if consul:
        cluster.write_text(cluster.read_text().replace("\n[packages]", CONSUL, 1))
    if os_name == "debian":  # every Debian writer: autoinstall needs a password hash
        text = cluster.read_text().replace(
            "[images]\n", '[images]\npassword_hash = "$6$salt$' + "x" * 86 + '"\n', 1
        )
        cluster.write_text(text)
    request = pipeline.Request("build", cluster, out_dir=tmp_path / "dist")
    plan = pipeline.plan(request)
    result = pipeline.execute(plan)
    declared = {(o.path, o.node, o.secret) for o in plan.outputs()}
    built = {(a.path, a.node, a.secret) for a in result.artifacts}
    assert declared == built
    ran = {job.writer.name for job in plan.jobs}
    expected = {
        "openbsd": {"openbsd-pkg", "pkg-repo", "openbsd-autoinstall", "manifest"},
        "debian": {"deb", "apt-repo", "cloud-init", "autoinstall", "manifest"},
    }[os_name]
    if consul:
        expected |= {"openbsd": {"consul-openbsd-pkg"}, "debian": {"consul-deb"}}[os_name]
    assert ran == expected
    # every node's artifacts: each writer that applies made at least one for it
    for job in plan.jobs:
        for node in job.nodes:
            assert any(a.node == node.name for a in result.artifacts), node.name


def test_a_tool_upgrade_with_identical_bytes_bumps_no_version(tmp_path: Path) -> None:
    """The package version follows the package's bytes, not the tool's version."""
    write_cluster(tmp_path, "debian")

    def build(version: str) -> dict[str, object]:
        code = (
            "import sys, builder; builder.__version__ = sys.argv[1]; "
            "from builder.cli import main; sys.argv = ['nomad-build', 'build']; main()"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, version],
            cwd=tmp_path,
            env=nomad_env(),
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads((tmp_path / "state" / "versions.json").read_text())

    first = build("0.1.0")
    assert build("9.9.9") == first
    assert all(v["deb"]["version"] == 1 for v in first.values())  # type: ignore[index]
