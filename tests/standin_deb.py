"""What the test stand-ins of HashiCorp's packages (tests/fake_nomad, tests/fake_consul)
share: building a stand-in .deb with dpkg-deb, byte-stable, and reading the one line
its agent prints when its checks pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path


def build_standin_deb(
    here: Path,
    out_dir: Path,
    *,
    package: str,
    version: str,
    control: str,
    files: Sequence[tuple[str, str, int]],
    conffiles: Sequence[str],
    scripts: Sequence[str] = ("preinst", "postinst", "postrm"),
) -> Path:
    """Build <package>_<version>_all.deb into out_dir from the files in `here`
    ((source name, path in the package, mode) each; maintainer `scripts`); its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"{package}_{version}_all.deb"
    with tempfile.TemporaryDirectory(prefix=f"fake-{package}-") as tmp:
        root = Path(tmp) / "root"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN/control").write_text(control)
        (root / "DEBIAN/conffiles").write_text("".join(f"{c}\n" for c in conffiles))
        for script in scripts:
            shutil.copyfile(here / script, root / "DEBIAN" / script)
            (root / "DEBIAN" / script).chmod(0o755)
        for src, dest, mode in files:
            target = root / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(here / src, target)
            target.chmod(mode)
        for d in sorted(p for p in root.rglob("*") if p.is_dir()):
            d.chmod(0o755)
        root.chmod(0o755)
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
            check=True,
            capture_output=True,
            env=env,
        )
    return deb


def parse_ok_line(agent: str, line: str) -> dict[str, str]:
    """The key=value fields of a ``<agent>-standin: OK ...`` line (ValueError otherwise)."""
    prefix = f"{agent}-standin: OK "
    if not line.startswith(prefix):
        raise ValueError(f"not a {agent}-standin OK line: {line!r}")
    return dict(field.split("=", 1) for field in line[len(prefix) :].split())
