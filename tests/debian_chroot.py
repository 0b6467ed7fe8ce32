"""Debian bookworm chroots for real package installs in tests (root only).

API (the .deb and apt-repository tests share it):

    root = chroot(tmp_path)            # a fresh, private bookworm root under tmp_path
    run_in(root, "apt-get", "install", "-y", "/tmp/x.deb")   # -> CompletedProcess[str]
    inside = copy_in(root, path)       # copies a host file into root's /tmp; its path inside
    deny_service_starts(root)          # policy-rc.d that logs and refuses (exit 101)
    service_actions(root)              # what policy-rc.d was asked, e.g. ["nomad.service start"]
    base_tarball()                     # the cached mmdebstrap tarball (built on first use)

The base is built once with mmdebstrap (variant "apt" plus PACKAGES: systemd for
deb-systemd-helper/-invoke and the units, adduser/passwd for service users, procps
for /bin/kill, which units name in ExecReload=) from
the machine's OWN apt sources -- /etc/apt/sources.list and the *.list / *.sources
files of /etc/apt/sources.list.d/ that serve SUITE, passed to mmdebstrap as files,
so no mirror host is written anywhere. It is cached as a tarball under
.cache/debian-chroot/, keyed by a hash of those sources, the package list, the
suite and mmdebstrap's version; a lock makes parallel first uses build it once.
Each chroot() call extracts a fresh copy (about a second), so tests are
independent and parallel-safe.

run_in() runs a command with chroot(8) and a clean environment (no host
variables leak in; DEBIAN_FRONTEND=noninteractive). apt and dpkg need no /proc;
run_in(..., proc=True) mounts one inside a private mount namespace
(unshare --mount), so it is gone when the command ends, whatever happens.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

__all__ = [
    "PACKAGES",
    "SUITE",
    "apt_sources",
    "base_tarball",
    "chroot",
    "copy_in",
    "deny_service_starts",
    "run_in",
    "service_actions",
]

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "debian-chroot"
SUITE = "bookworm"
VARIANT = "apt"
PACKAGES = ("systemd", "adduser", "passwd", "procps")
_LAYOUT = "1"  # bump when the way the base is made changes
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POLICY_LOG = "/var/log/policy-rc.d.log"


def apt_sources() -> list[Path]:
    """The machine's apt source files that serve SUITE, in apt's reading order."""
    etc = Path("/etc/apt")
    found = [etc / "sources.list"] if (etc / "sources.list").is_file() else []
    parts = etc / "sources.list.d"
    if parts.is_dir():
        found += sorted(
            p for p in parts.iterdir() if p.is_file() and p.suffix in (".list", ".sources")
        )
    serving = [p for p in found if _serves(p.read_text(errors="replace"), SUITE)]
    if not serving:
        raise RuntimeError(f"no apt source on this machine serves {SUITE} (looked in {etc})")
    return serving


def _serves(text: str, suite: str) -> bool:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] in ("deb", "deb-src") and suite in words[1:]:  # one-line style
            return True
        if words[0] == "Suites:" and suite in words[1:]:  # deb822
            return True
    return False


def _mmdebstrap_version() -> str:
    out = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _cache_key(sources: list[Path]) -> str:
    h = hashlib.sha256()
    for part in (
        _LAYOUT,
        SUITE,
        VARIANT,
        ",".join(PACKAGES),
        _mmdebstrap_version(),
        os.uname().machine,
    ):
        h.update(part.encode() + b"\0")
    for src in sources:
        h.update(str(src).encode() + b"\0" + src.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def base_tarball() -> Path:
    """The cached base tarball, built with mmdebstrap on first use."""
    if os.geteuid() != 0:
        raise RuntimeError("Debian chroots need root (mmdebstrap, chroot, owners in the tarball)")
    sources = apt_sources()
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"{SUITE}-{_cache_key(sources)}.tar"
    if tarball.exists():
        return tarball
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():  # another test process built it while we waited
            return tarball
        partial = CACHE / f"{tarball.stem}.partial-{os.getpid()}.tar"
        cmd = [
            "mmdebstrap",
            "--quiet",
            "--format=tar",
            f"--variant={VARIANT}",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(partial),
            *map(str, sources),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"mmdebstrap failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        os.replace(partial, tarball)
        for old in CACHE.glob(f"{SUITE}-*.tar"):  # keep one base per suite
            if old != tarball:
                old.unlink(missing_ok=True)
    return tarball


def chroot(tmp_path: Path) -> Path:
    """A fresh bookworm root at tmp_path/root (extracted from the cached base)."""
    base = base_tarball()
    root = Path(tmp_path) / "root"
    root.mkdir(parents=True)
    proc = subprocess.run(
        ["tar", "-C", str(root), "--numeric-owner", "-xpf", str(base)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"extracting {base} failed: {proc.stderr}")
    return root


def run_in(
    root: Path,
    *cmd: str,
    check: bool = True,
    input: str | None = None,
    env: dict[str, str] | None = None,
    proc: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run cmd inside root (chroot, clean environment); CalledProcessError shows its output."""
    environment = {
        "PATH": PATH,
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
        "DEBIAN_FRONTEND": "noninteractive",
        **(env or {}),
    }
    inner = ["chroot", str(root), "/usr/bin/env", "-i"]
    inner += [f"{k}={v}" for k, v in environment.items()] + list(cmd)
    if proc:
        # A private mount namespace: the /proc mount dies with the command.
        script = 'mount -t proc proc "$1/proc" && shift && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
        argv += [str(root), *inner]
    else:
        argv = inner
    result = subprocess.run(
        argv, input=input, capture_output=True, text=True, env={"PATH": PATH}, timeout=timeout
    )
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, list(cmd), output=result.stdout, stderr=result.stderr
        )
    return result


def copy_in(root: Path, src: Path, dest_dir: str = "/tmp") -> str:
    """Copy a host file into the chroot; returns its absolute path inside."""
    inside = f"{dest_dir.rstrip('/')}/{Path(src).name}"
    target = root / inside.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    return inside


def deny_service_starts(root: Path, *, systemd_running: bool = True) -> None:
    """Install a policy-rc.d that records each request and refuses it (exit 101).

    With systemd_running, /run/systemd/system exists in the root, so maintainer
    scripts take their "systemd is running" path and ask deb-systemd-invoke,
    which asks policy-rc.d: service_actions() then shows what they wanted.
    """
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text(f'#!/bin/sh\necho "$*" >> {POLICY_LOG}\nexit 101\n')
    policy.chmod(0o755)
    if systemd_running:
        (root / "run/systemd/system").mkdir(parents=True, exist_ok=True)


def service_actions(root: Path) -> list[str]:
    """The requests policy-rc.d saw, oldest first (e.g. "nomad.service start")."""
    log = root / POLICY_LOG.lstrip("/")
    return log.read_text().splitlines() if log.exists() else []
