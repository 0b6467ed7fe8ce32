"""The wheel carries recipes/, packaging/ and images/ and the code finds them there."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO, write_cluster


def test_wheel_ships_data_and_renders_from_it(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("nomad_build-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data_file in (
        "builder/_data/recipes/server/recipe.toml",
        "builder/_data/recipes/client/recipe.toml",
        "builder/_data/recipes/nomad-schema.toml",
        "builder/_data/packaging/openbsd/rc.d.j2",
        "builder/_data/packaging/debian/nomad-build.conf.j2",
    ):
        assert data_file in names, data_file
    assert not any(n.startswith(("tests/", "state/", "dist/")) for n in names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    cluster = write_cluster(tmp_path / "c")
    out = tmp_path / "root"
    # Run from the unpacked wheel only (-I: no cwd, no user site), so data must come from _data.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import builder.data, builder.cli;"
        "from pathlib import Path;"
        "root = builder.data.data_root();"
        "assert root == Path(sys.argv[1]) / 'builder' / '_data', root;"
        "sys.argv = ['nomad-build', 'render', '-c', sys.argv[2], '--node', 'bi-node-sbg-1',"
        " '--out', sys.argv[3]]; builder.cli.main()"
    )
    subprocess.run(
        [sys.executable, "-I", "-c", code, str(site), str(cluster), str(out)],
        check=True,
        cwd=tmp_path,
    )
    assert (out / "etc/rc.d/nomad_agent").read_text().startswith("#!/bin/ksh")
