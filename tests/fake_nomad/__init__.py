"""A TEST-ONLY stand-in for HashiCorp's ``nomad`` Debian package.

No Nomad binary can be had here, so the tests install this instead: a package
named ``nomad`` (version STANDIN_VERSION) whose description says loudly that it
is a stand-in, shipping what HashiCorp's package ships and does, as far as
nomad-build's packages meet it:

- /usr/bin/nomad -- ``nomad-standin``, a Perl script (perl-base only): ``version``
  prints a version; ``agent -config PATH`` checks what the real agent needs
  (config parses, server/client enabled, data_dir writable, TLS files
  readable), prints one line starting ``nomad-standin: OK`` (or ``FAIL``), sends
  READY=1 under systemd and stays running;
- /usr/lib/systemd/system/nomad.service -- HashiCorp's unit text;
- /etc/nomad.d/nomad.hcl -- HashiCorp's default config (server AND client
  enabled), a conffile;
- HashiCorp's maintainer scripts: preinst ``useradd --system nomad``, postinst
  ``chown -R nomad:nomad /etc/nomad.d`` and the data dir, postrm ``userdel`` on
  purge.

API: ``build_fake_nomad_deb(out_dir) -> Path`` builds it with dpkg-deb (tests
only; nomad-build itself never needs dpkg-deb). The image tests install the same
package in their VM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["STANDIN_VERSION", "build_fake_nomad_deb", "parse_standin_line"]

HERE = Path(__file__).resolve().parent
STANDIN_VERSION = "1.9.3-1"  # as HashiCorp numbers its packages

CONTROL = f"""\
Package: nomad
Version: {STANDIN_VERSION}
Architecture: all
Maintainer: nomad-build tests <tests@nomad-build.invalid>
Depends: perl-base, passwd
Section: admin
Priority: optional
Description: TEST STAND-IN for HashiCorp's nomad package (NOT Nomad)
 Built by nomad-build's test suite in place of HashiCorp's nomad package,
 which cannot be had here. /usr/bin/nomad is a Perl script that checks what
 the agent would need (config, data dir, TLS files), prints one line and
 stays running. Never install it on a real machine.
"""

# (source file in this directory, path in the package, mode)
FILES = (
    ("nomad", "usr/bin/nomad", 0o755),
    ("nomad.service", "usr/lib/systemd/system/nomad.service", 0o644),
    ("nomad.hcl", "etc/nomad.d/nomad.hcl", 0o644),
)
SCRIPTS = ("preinst", "postinst", "postrm")


def build_fake_nomad_deb(out_dir: Path) -> Path:
    """Build nomad_<STANDIN_VERSION>_all.deb into out_dir (byte-stable) and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"nomad_{STANDIN_VERSION}_all.deb"
    with tempfile.TemporaryDirectory(prefix="fake-nomad-") as tmp:
        root = Path(tmp) / "root"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN/control").write_text(CONTROL)
        (root / "DEBIAN/conffiles").write_text("/etc/nomad.d/nomad.hcl\n")
        for script in SCRIPTS:
            shutil.copyfile(HERE / script, root / "DEBIAN" / script)
            (root / "DEBIAN" / script).chmod(0o755)
        for src, dest, mode in FILES:
            target = root / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / src, target)
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


def parse_standin_line(line: str) -> dict[str, str]:
    """The key=value fields of a ``nomad-standin: OK ...`` line (ValueError otherwise)."""
    prefix = "nomad-standin: OK "
    if not line.startswith(prefix):
        raise ValueError(f"not a nomad-standin OK line: {line!r}")
    return dict(field.split("=", 1) for field in line[len(prefix) :].split())
