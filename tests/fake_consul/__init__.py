"""A TEST-ONLY stand-in for HashiCorp's ``consul`` Debian package.

No Consul binary can be had here, so the tests install this instead: a package
named ``consul`` (version STANDIN_VERSION) whose description says loudly that it
is a stand-in, shipping what HashiCorp's package ships and does (hashicorp/consul
.release/linux/), as far as nomad-build's consul-config packages meet it:

- /usr/bin/consul -- ``consul-standin``, a Perl script (perl-base only):
  ``version`` prints a version; ``agent -config-file=F`` / ``-config-dir=D``
  parses the JSON (and HCL) configuration it is given and checks what the real
  agent needs (a writable data_dir, a well-formed gossip key, a server's
  bootstrap_expect, TLS files it can read as the user it runs as), prints one
  line starting ``consul-standin: OK`` (or ``FAIL``), sends READY=1 under
  systemd and stays running;
- /usr/lib/systemd/system/consul.service -- HashiCorp's unit (Type=notify,
  User/Group consul, ``agent -config-dir=/etc/consul.d/``);
- /etc/consul.d/consul.hcl -- HashiCorp's default config (data_dir
  /opt/consul), a conffile;
- HashiCorp's maintainer scripts: preinst ``useradd --system --user-group
  consul``, postinst ``chown -R consul:consul /opt/consul /etc/consul.d``,
  postrm ``userdel`` on purge.

API: ``build_fake_consul_deb(out_dir) -> Path`` builds it with dpkg-deb (tests
only). The boot test bakes it into its VM image beside the stand-in nomad.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["STANDIN_VERSION", "build_fake_consul_deb", "parse_standin_line"]

HERE = Path(__file__).resolve().parent
STANDIN_VERSION = "1.20.1-1"  # as HashiCorp numbers its packages

CONTROL = f"""\
Package: consul
Version: {STANDIN_VERSION}
Architecture: all
Maintainer: nomad-build tests <tests@nomad-build.invalid>
Depends: perl-base, passwd
Section: admin
Priority: optional
Description: TEST STAND-IN for HashiCorp's consul package (NOT Consul)
 Built by nomad-build's test suite in place of HashiCorp's consul package,
 which cannot be had here. /usr/bin/consul is a Perl script that checks what
 the agent would need (config, data dir, gossip key, TLS files), prints one
 line and stays running. Never install it on a real machine.
"""

# (source file in this directory, path in the package, mode)
FILES = (
    ("consul", "usr/bin/consul", 0o755),
    ("consul.service", "usr/lib/systemd/system/consul.service", 0o644),
    ("consul.hcl", "etc/consul.d/consul.hcl", 0o644),
)
SCRIPTS = ("preinst", "postinst", "postrm")


def build_fake_consul_deb(out_dir: Path) -> Path:
    """Build consul_<STANDIN_VERSION>_all.deb into out_dir (byte-stable); its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"consul_{STANDIN_VERSION}_all.deb"
    with tempfile.TemporaryDirectory(prefix="fake-consul-") as tmp:
        root = Path(tmp) / "root"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN/control").write_text(CONTROL)
        (root / "DEBIAN/conffiles").write_text("/etc/consul.d/consul.hcl\n")
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
    """The key=value fields of a ``consul-standin: OK ...`` line (ValueError otherwise)."""
    prefix = "consul-standin: OK "
    if not line.startswith(prefix):
        raise ValueError(f"not a consul-standin OK line: {line!r}")
    return dict(field.split("=", 1) for field in line[len(prefix) :].split())
