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

from pathlib import Path

from standin_deb import build_standin_deb, parse_ok_line

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


def build_fake_nomad_deb(out_dir: Path) -> Path:
    """Build nomad_<STANDIN_VERSION>_all.deb into out_dir (byte-stable); its path."""
    return build_standin_deb(
        HERE,
        out_dir,
        package="nomad",
        version=STANDIN_VERSION,
        control=CONTROL,
        files=FILES,
        conffiles=["/etc/nomad.d/nomad.hcl"],
    )


def parse_standin_line(line: str) -> dict[str, str]:
    """The key=value fields of a ``nomad-standin: OK ...`` line (ValueError otherwise)."""
    return parse_ok_line("nomad", line)
