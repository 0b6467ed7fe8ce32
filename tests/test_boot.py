"""Boot test: a Debian bookworm VM comes up as a cluster node from its cloud-init seed.

1. A small bookworm disk image (cached under .cache/boot/, keyed by its inputs):
   mmdebstrap from the machine's OWN apt sources (tests/debian_chroot.apt_sources:
   the files themselves go to mmdebstrap, no mirror host is written anywhere) with
   systemd, cloud-init, the cloud kernel and ifupdown -- what a Debian cloud image
   has -- plus, standing in for HashiCorp's package (no Nomad binary can be had
   here), the TEST-ONLY stand-in `nomad` package (tests/fake_nomad): its agent
   checks what the real one needs and prints ``nomad-standin: OK …``. Test-only
   additions: cloud-init looks for NoCloud only (no cloud metadata probing), the
   locale is preset, and a report unit prints cloud-init's status, the package,
   the unit state, the addresses and the stand-in's line to the serial console,
   then powers off.
2. A server node's seed is built by the real writers: render -> build_deb ->
   build_cloud_init_seed, with a MAC and a static address, so the seed's
   network-config (MAC match + set-name, ifupdown) is proved too.
3. qemu-system-x86_64 with TCG (no KVM), direct kernel boot, the image as an
   overlay, the seed ISO as a second disk, a NIC with the node's MAC on an
   isolated user network. The serial console is the evidence.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from builder.cluster import load
from builder.render import render_node
from builder.state import State
from builder.writers.cloud_init import build_cloud_init_seed
from builder.writers.deb import build_deb

from conftest import example_text
from debian_chroot import apt_sources
from fake_nomad import build_fake_nomad_deb, parse_standin_line

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "boot"
LAYOUT = "2"  # bump when the way the image is made changes
SUITE = "bookworm"
PACKAGES = (
    "systemd-sysv",
    "udev",
    "cloud-init",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "ifupdown",
    "iproute2",
    "e2fsprogs",  # cloud-init's resizefs
    "tzdata",  # cloud-init's timezone
    "openssh-server",  # the admin's way in: host keys, authorized_keys
    "adduser",
    "procps",
    "netbase",
)
NODE = "bi-core-sbg-1"  # a server: the agent runs as its own user
MAC = "52:54:00:4e:42:01"
ADDRESS = "10.20.130.52"
BOOT_TIMEOUT = 270  # seconds from power-on to power-off; the whole test stays under 5 min
MTIME = 1_700_000_000
KEYS = (  # the admin's keys (public halves only; nothing logs in during the test)
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@laptop",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBW3xSrG2mBf2hTZrB7yjO5XSN0S6ulDQ4aIUvW1Zo0L ops@desk",
)

# ------------------------------------------------------------ test-only image files
CLOUD_CFG = """\
# TEST IMAGE ONLY (nomad-build boot test): look for a NoCloud seed only.
datasource_list: [ NoCloud, None ]
"""
REPORT_UNIT = """\
# TEST IMAGE ONLY (nomad-build boot test).
# Not ordered after cloud-final (which runs after multi-user.target): the script
# waits for cloud-init itself.
[Unit]
Description=nomad-build boot test: report to the serial console, then power off

[Service]
Type=simple
ExecStart=/usr/local/sbin/nomad-build-boot-report

[Install]
WantedBy=multi-user.target
"""
REPORT_SCRIPT = """\
#!/bin/sh
# TEST IMAGE ONLY (nomad-build boot test): what the test reads off the console.
# Each line opens the console anew: a getty starting on it hangs up older opens.
say() { echo "REPORT $*" >/dev/ttyS0; }
cloud-init status --wait >/dev/null 2>&1 || true
i=0
while [ $i -lt 120 ] && [ ! -e /var/lib/cloud/instance/boot-finished ]; do
    sleep 1; i=$((i + 1))
done
say "cloud-init: $(cloud-init status 2>&1 | head -n 1)"
cloud-init status --long 2>&1 | while read -r line; do say "cloud-init-long: $line"; done
standin() { journalctl -u nomad.service -o cat --no-pager | grep '^nomad-standin: '; }
i=0
while [ $i -lt 60 ] && ! standin >/dev/null; do
    sleep 1; i=$((i + 1))
done
say "package: $(dpkg-query -W -f='${Package} ${Version} ${Status}' 'nomad-config-*' 2>&1)"
say "enabled: $(systemctl is-enabled nomad.service 2>&1)"
say "active: $(systemctl is-active nomad.service 2>&1)"
say "hostname: $(hostname) $(hostname -f 2>&1)"
say "keys: $(cat /home/ops/.ssh/authorized_keys 2>&1 | wc -l)"
ip -o -4 addr show | while read -r n ifc fam addr rest; do say "addr: $ifc $addr"; done
standin | while read -r line; do say "agent: $line"; done
say "end"
systemctl poweroff
"""
TEST_FILES = {
    "etc/fstab": ("/dev/vda / ext4 rw,errors=remount-ro 0 1\n", 0o644),
    "etc/default/locale": ("LANG=C.UTF-8\n", 0o644),
    "etc/cloud/cloud.cfg.d/05-nomad-build-test.cfg": (CLOUD_CFG, 0o644),
    "etc/systemd/system/nomad-build-boot-report.service": (REPORT_UNIT, 0o644),
    "usr/local/sbin/nomad-build-boot-report": (REPORT_SCRIPT, 0o755),
}


def need(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: `make tools` installs scripts/debian-packages.txt")
    return path


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc


def _cache_key(sources: list[Path], standin: bytes) -> str:
    h = hashlib.sha256()
    version = _run([need("mmdebstrap"), "--version"], "mmdebstrap --version").stdout
    for part in (LAYOUT, SUITE, ",".join(PACKAGES), version, os.uname().machine):
        h.update(part.encode() + b"\0")
    for src in sources:
        h.update(str(src).encode() + b"\0" + src.read_bytes() + b"\0")
    for path, (text, mode) in sorted(TEST_FILES.items()):
        h.update(f"{path}\0{mode}\0{text}\0".encode())
    h.update(standin)
    return h.hexdigest()[:16]


def base_image(tmp: Path) -> tuple[Path, Path, Path]:
    """(root.img, vmlinuz, initrd.img) of the cached test image, built on first use."""
    if os.geteuid() != 0:
        pytest.fail("the boot image is built as root (mmdebstrap to a directory, chroot)")
    need("mke2fs")
    standin = build_fake_nomad_deb(tmp / "standin")
    sources = apt_sources()
    CACHE.mkdir(parents=True, exist_ok=True)
    done = CACHE / _cache_key(sources, standin.read_bytes())
    files = (done / "root.img", done / "vmlinuz", done / "initrd.img")
    if done.is_dir():
        return files
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_dir():
            return files
        work = CACHE / f"{done.name}.partial-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            _build(work, sources, standin)
            os.replace(work, done)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for old in CACHE.iterdir():  # one image at a time
            if old.is_dir() and old != done and ".partial-" not in old.name:
                shutil.rmtree(old, ignore_errors=True)
    return files


def _build(work: Path, sources: list[Path], standin: Path) -> None:
    root = work / "root"
    _run(
        [need("mmdebstrap"), "--quiet", "--variant=apt", f"--include={','.join(PACKAGES)}",
         SUITE, str(root), *map(str, sources)],
        "mmdebstrap",
    )  # fmt: skip
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    shutil.copy(standin, root / "tmp" / standin.name)
    _run(["chroot", str(root), "dpkg", "-i", f"/tmp/{standin.name}"], "stand-in install", env=env)
    (root / "tmp" / standin.name).unlink()
    for rel, (text, mode) in TEST_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "nomad-build-boot-report.service").symlink_to(
        "/etc/systemd/system/nomad-build-boot-report.service"
    )
    (kernel,) = sorted((root / "boot").glob("vmlinuz-*"))
    (initrd,) = sorted((root / "boot").glob("initrd.img-*"))
    shutil.copy(kernel, work / "vmlinuz")
    shutil.copy(initrd, work / "initrd.img")
    _run(
        [
            need("mke2fs"),
            "-q",
            "-t",
            "ext4",
            "-L",
            "root",
            "-d",
            str(root),
            str(work / "root.img"),
            "3G",
        ],
        "mke2fs",
    )
    shutil.rmtree(root)


def build_seed(tmp: Path) -> tuple[bytes, str, str]:
    """(seed ISO, package name, service user) of NODE, through the real writers."""
    text = re.sub(
        r"^ssh_keys = .*$",
        f"ssh_keys = {json.dumps(list(KEYS))}",
        example_text("debian"),
        count=1,
        flags=re.M,
    )
    node_line = f'name = "{NODE}"\nrole = "server"\naddress = "{ADDRESS}"\n'
    assert node_line in text
    text = text.replace(
        node_line,
        node_line + f'mac = "{MAC}"\nprefix = 24\ngateway = "10.20.130.1"\n'
        'nameservers = ["10.20.130.1"]\n',
    )
    (tmp / "cluster.toml").write_text(text)
    cluster = load(tmp / "cluster.toml")
    node = cluster.node(NODE)
    with State.open(tmp / "state", create=True) as st:
        tree = render_node(cluster, node, st)
    deb = build_deb(node, tree, version=1, mtime=MTIME)
    seed = build_cloud_init_seed(node, tree, deb=deb, repo_keyring=None, mtime=MTIME)
    return seed.data, node.deb_package, tree.service.account.user


def test_debian_vm_becomes_the_node_from_its_seed(tmp_path: Path) -> None:
    qemu = need("qemu-system-x86_64")
    qemu_img = need("qemu-img")
    image, kernel, initrd = base_image(tmp_path)
    seed, package, user = build_seed(tmp_path)
    (tmp_path / "seed.iso").write_bytes(seed)
    overlay = tmp_path / "disk.qcow2"
    _run(
        [qemu_img, "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "raw", str(overlay)],
        "qemu-img create",
    )
    serial = tmp_path / "serial.log"
    cmd = [
        qemu, "-accel", "tcg", "-m", "1024", "-smp", "2",
        "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{serial}",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-drive", f"file={tmp_path / 'seed.iso'},if=virtio,format=raw,readonly=on",
        "-nic", f"user,model=virtio-net-pci,mac={MAC},restrict=on",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the VM did not power off within {BOOT_TIMEOUT}s:\n{_tail(serial)}")
    took = time.monotonic() - started
    console = serial.read_text(errors="replace")
    assert proc.returncode == 0, proc.stderr + _tail(serial)
    report = [m.group(1).strip() for m in re.finditer(r"REPORT (.*)", console)]
    assert report and report[-1] == "end", _tail(serial)
    fields: dict[str, list[str]] = {}
    for line in report:
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)

    fqdn = f"{NODE}.intra.terror.ninja"
    assert f"nomad-build: cloud-init finished on {fqdn}" in console  # our final_message
    assert fields["cloud-init"] == ["status: done"], fields.get("cloud-init-long")
    (pkg,) = fields["package"]
    assert re.fullmatch(rf"{package} \S+ install ok installed", pkg), pkg
    assert fields["enabled"] == ["enabled"] and fields["active"] == ["active"], fields
    assert fields["hostname"] == [f"{NODE} {fqdn}"]
    assert fields["keys"] == [str(len(KEYS))]  # the admin user and its SSH keys
    assert f"eth1 {ADDRESS}/24" in fields["addr"], fields["addr"]  # matched by MAC, renamed
    agent = fields["agent"]
    assert agent, "the stand-in agent printed nothing:\n" + _tail(serial)
    standin = parse_standin_line(agent[0])
    assert standin["user"] == user == "nomad"
    assert standin["server"] == "true"
    print(f"boot test: VM powered off after {took:.0f}s; agent: {agent[0]}")


def _tail(path: Path, lines: int = 80) -> str:
    if not path.exists():
        return "(no serial output)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
