"""publish_tree's double buffer: the tree dist/ held before is kept as a 0700 spare
beside it and brought up to date in place by the next publish (what changed is
written, linked or removed), then exchanged with dist/ in one step. A spare it cannot
trust exactly (marked dirty, or not what nomad-build makes) is never used.

The crash tests (tests/test_crash.py) kill builds on both paths; these pin each rule."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from builder.publish import publish_tree
from builder.writers import Artifact

from conftest import tree_fingerprint


def artifacts(**files: bytes) -> list[Artifact]:
    """Artifacts from name=bytes ('__' stands for '/'; a name ending in _key is secret)."""
    return [Artifact(k.replace("__", "/"), v, secret=k.endswith("_key")) for k, v in files.items()]


def verified(out: Path, *paths: str) -> dict[str, tuple[int, int]]:
    """As the build passes what it verified by hash in dist/: path -> (st_dev, st_ino)."""
    return {p: ((st := (out / p).lstat()).st_dev, st.st_ino) for p in paths}


def expected(arts: list[Artifact]) -> dict[str, bytes]:
    return {a.path: a.data for a in arts}


def files_of(directory: Path) -> dict[str, bytes]:
    """relpath -> bytes of every file below `directory` (links to directories not
    followed)."""
    out = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(root, name)
            out[str(path.relative_to(directory))] = path.read_bytes()
    return out


GEN1 = artifacts(a__one=b"1", a__two=b"2", b__node_key=b"k1", old__gone=b"x")
GEN2 = artifacts(a__one=b"1", a__two=b"2b", b__node_key=b"k1", c__new=b"3")
GEN3 = artifacts(a__one=b"1", a__two=b"2c", b__node_key=b"k2", c__new=b"3", d__e__f=b"4")


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The staging directories made (a publish through the spare makes none)."""
    made: list[str] = []
    real = tempfile.mkdtemp

    def spy(dir: Path, prefix: str) -> str:  # as builder.publish calls it
        path = real(dir=dir, prefix=prefix)
        made.append(path)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    return made


def test_the_replaced_tree_becomes_the_spare_and_is_brought_up_to_date(
    tmp_path: Path, staged: list[str]
) -> None:
    out, spare = tmp_path / "dist", tmp_path / ".dist.spare"
    publish_tree(out, GEN1)
    assert not spare.exists()  # nothing was replaced
    publish_tree(out, GEN2)
    assert files_of(out) == expected(GEN2)
    assert files_of(spare / "tree") == expected(GEN1)  # the tree dist/ held
    assert stat.S_IMODE(spare.stat().st_mode) == 0o700 and os.listdir(spare) == ["tree"]
    assert len(staged) == 2
    inode = (out / "a" / "one").stat().st_ino

    publish_tree(out, GEN3, unchanged=verified(out, "a/one", "c/new"))

    assert len(staged) == 2  # no staging directory: the spare was brought up to date
    assert files_of(out) == expected(GEN3)  # exactly: old/gone is not carried over
    assert (out / "a" / "one").stat().st_ino == inode  # unchanged: the same file
    assert (out / "b" / "node_key").stat().st_mode & 0o777 == 0o600
    assert not (out / "old").exists()
    assert files_of(spare / "tree") == expected(GEN2)
    assert os.listdir(spare) == ["tree"]


def test_a_spare_file_with_other_bytes_is_replaced(tmp_path: Path, staged: list[str]) -> None:
    out, spare = tmp_path / "dist", tmp_path / ".dist.spare"
    publish_tree(out, GEN1)
    publish_tree(out, GEN2)
    # a file of the spare changed behind our back, for a path whose artifact is unchanged
    victim = spare / "tree" / "a" / "one"
    victim.unlink()
    victim.write_bytes(b"tampered")
    (spare / "tree" / "stray").write_bytes(b"not listed")
    os.mkdir(spare / "tree" / "empty")

    publish_tree(out, GEN3, unchanged=verified(out, "a/one"))

    assert len(staged) == 2
    assert files_of(out) == expected(GEN3)
    assert not (out / "stray").exists() and not (out / "empty").exists()


def test_a_dirty_spare_is_removed_and_the_tree_assembled_afresh(
    tmp_path: Path, staged: list[str]
) -> None:
    out, spare = tmp_path / "dist", tmp_path / ".dist.spare"
    publish_tree(out, GEN1)
    publish_tree(out, GEN2)
    (spare / "dirty").write_bytes(b"")  # a run died while bringing it up to date
    (spare / "tree" / "a" / "two").write_bytes(b"half")

    publish_tree(out, GEN3)

    assert len(staged) == 3  # assembled in a staging directory
    assert files_of(out) == expected(GEN3)
    assert files_of(spare / "tree") == expected(GEN2)  # the tree just replaced
    assert os.listdir(spare) == ["tree"]


def test_a_spare_nomad_build_did_not_make_is_left_alone(tmp_path: Path) -> None:
    out, spare = tmp_path / "dist", tmp_path / ".dist.spare"
    publish_tree(out, GEN1)
    spare.mkdir(mode=0o755)
    (spare / "notes.txt").write_text("someone else's\n")
    before = tree_fingerprint(spare)

    publish_tree(out, GEN2)
    publish_tree(out, GEN3)

    assert files_of(out) == expected(GEN3)
    assert tree_fingerprint(spare) == before
    assert sorted(os.listdir(tmp_path)) == [".dist.spare", "dist"]  # no staging left


def test_a_failed_update_of_the_spare_leaves_dist_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    publish_tree(out, GEN1)
    publish_tree(out, GEN2)
    assert (tmp_path / ".dist.spare" / "tree").is_dir()
    before = tree_fingerprint(out)
    # "a/one" as a file and as a directory at once: both ways fail part-way through
    bad = [*GEN3, Artifact("a/one/two", b"3", secret=False)]
    with pytest.raises(OSError):
        publish_tree(out, bad)
    assert tree_fingerprint(out) == before
    assert sorted(os.listdir(tmp_path)) == ["dist"]  # the spare it could not finish: gone
    publish_tree(out, GEN3)
    assert files_of(out) == expected(GEN3)


def test_a_link_in_the_spare_is_never_followed(tmp_path: Path) -> None:
    out, spare = tmp_path / "dist", tmp_path / ".dist.spare"
    publish_tree(out, GEN1)
    publish_tree(out, GEN2)
    outside = tmp_path / "outside"
    outside.mkdir()
    assert files_of(spare / "tree") == expected(GEN1)  # it has a/ and no c/
    shutil.rmtree(spare / "tree" / "a")
    for name in ("a", "c"):  # directories the next tree needs, as links to elsewhere
        (spare / "tree" / name).symlink_to(outside)

    publish_tree(out, GEN3, unchanged=verified(out, "a/one", "c/new"))

    assert list(outside.iterdir()) == []  # nothing written through a link
    assert files_of(out) == expected(GEN3)
    assert not (out / "a").is_symlink() and not (out / "c").is_symlink()
