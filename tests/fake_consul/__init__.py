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

from pathlib import Path

from standin_deb import build_standin_deb, parse_ok_line

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


def build_fake_consul_deb(out_dir: Path) -> Path:
    """Build consul_<STANDIN_VERSION>_all.deb into out_dir (byte-stable); its path."""
    return build_standin_deb(
        HERE,
        out_dir,
        package="consul",
        version=STANDIN_VERSION,
        control=CONTROL,
        files=FILES,
        conffiles=["/etc/consul.d/consul.hcl"],
    )


def parse_standin_line(line: str) -> dict[str, str]:
    """The key=value fields of a ``consul-standin: OK ...`` line (ValueError otherwise)."""
    return parse_ok_line("consul", line)
