"""What a build publishes depends on the cluster file's content and the state, nothing else.

- Two fresh states hold different keys, so their outputs are not comparable; one state
  built twice, into two output directories, gives byte-identical trees.
- Renaming the cluster file (same content) changes no artifact byte and bumps no version.
- `check` writes nothing: state/ and dist/ stay byte-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import copy_tree, nomad_build, tree_fingerprint

CLUSTER = "cluster.toml"


def build(directory: Path, *args: str, env: dict[str, str] | None = None) -> None:
    proc = nomad_build(directory, "build", *args, env=env)
    assert proc.returncode == 0, proc.stderr


def test_two_fresh_states_are_not_comparable(
    tmp_path: Path, built_example: Callable[[str], Path]
) -> None:
    """Why the tests below share one state: a fresh state has fresh keys."""
    a = built_example("mixed")
    (tmp_path / CLUSTER).write_text((a / CLUSTER).read_text())
    build(tmp_path, "-c", CLUSTER)
    for rel in ("ca/ca.key", "gossip.key", "bi-sbg-pkg.sec", "apt-signing.key"):
        assert (a / "state" / rel).read_bytes() != (tmp_path / "state" / rel).read_bytes(), rel
    assert tree_fingerprint(a / "dist") != tree_fingerprint(tmp_path / "dist")


def test_one_state_built_twice_is_byte_identical(
    tmp_path: Path, built_example: Callable[[str], Path]
) -> None:
    copy_tree(built_example("mixed"), tmp_path)
    build(tmp_path, "-c", CLUSTER, "--out", "one")
    build(tmp_path, "-c", CLUSTER, "--out", "two")
    one, two = tree_fingerprint(tmp_path / "one"), tree_fingerprint(tmp_path / "two")
    assert one and one == two
    assert one == tree_fingerprint(tmp_path / "dist")  # ... and to the first build's


def test_one_state_built_twice_with_source_date_epoch_is_byte_identical(
    tmp_path: Path, built_example: Callable[[str], Path]
) -> None:
    copy_tree(built_example("mixed"), tmp_path)
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    build(tmp_path, "-c", CLUSTER, "--out", "one", env=env)
    build(tmp_path, "-c", CLUSTER, "--out", "two", env=env)
    one, two = tree_fingerprint(tmp_path / "one"), tree_fingerprint(tmp_path / "two")
    assert one and one == two


def test_a_copied_state_elsewhere_builds_the_same_bytes(
    tmp_path: Path, built_example: Callable[[str], Path]
) -> None:
    """Nothing depends on where the state and the cluster file live."""
    built = built_example("mixed")
    copy_tree(built, tmp_path / "elsewhere" / "deeper")
    build(tmp_path / "elsewhere" / "deeper", "-c", CLUSTER, "--out", "again")
    again = tree_fingerprint(tmp_path / "elsewhere" / "deeper" / "again")
    assert again == tree_fingerprint(built / "dist")


def test_renaming_the_cluster_file_changes_nothing(
    tmp_path: Path, built_example: Callable[[str], Path]
) -> None:
    copy_tree(built_example("mixed"), tmp_path)
    build(tmp_path, "-c", CLUSTER)
    dist, state = tree_fingerprint(tmp_path / "dist"), tree_fingerprint(tmp_path / "state")
    versions = (tmp_path / "state" / "versions.json").read_bytes()

    (tmp_path / CLUSTER).rename(tmp_path / "other.toml")
    build(tmp_path, "-c", "other.toml", "--state", "state")
    assert tree_fingerprint(tmp_path / "dist") == dist
    assert (tmp_path / "state" / "versions.json").read_bytes() == versions
    assert tree_fingerprint(tmp_path / "state") == state


def test_check_writes_nothing(tmp_path: Path, built_example: Callable[[str], Path]) -> None:
    copy_tree(built_example("mixed"), tmp_path)
    before = tree_fingerprint(tmp_path)
    proc = nomad_build(tmp_path, "check", "-c", CLUSTER)
    assert proc.returncode == 0, proc.stderr
    assert tree_fingerprint(tmp_path) == before


def test_check_of_a_changed_cluster_writes_nothing(
    tmp_path: Path, built_example: Callable[[str], Path]
) -> None:
    """Even when a build would change things (a new node), check only tells."""
    copy_tree(built_example("mixed"), tmp_path)
    text = (tmp_path / CLUSTER).read_text()
    (tmp_path / CLUSTER).write_text(
        text + '\n[[nodes]]\nname = "bi-node-sbg-4"\nrole = "client"\naddress = "10.20.131.44"\n'
    )
    before = tree_fingerprint(tmp_path)
    proc = nomad_build(tmp_path, "check", "-c", CLUSTER)
    assert proc.returncode == 0, proc.stderr
    assert "bi-node-sbg-4" in proc.stdout
    assert tree_fingerprint(tmp_path) == before


def test_check_on_a_fresh_directory_creates_nothing(
    tmp_path: Path, built_example: Callable[[str], Path]
) -> None:
    (tmp_path / CLUSTER).write_text((built_example("mixed") / CLUSTER).read_text())
    before = tree_fingerprint(tmp_path)
    proc = nomad_build(tmp_path, "check", "-c", CLUSTER)
    assert proc.returncode == 0, proc.stderr
    assert tree_fingerprint(tmp_path) == before
    assert not (tmp_path / "state").exists()
