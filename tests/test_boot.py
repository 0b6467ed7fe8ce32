"""Boot test: a Debian bookworm VM comes up as a cluster node from its cloud-init seed.

1. A small bookworm disk image (cached under .cache/boot/, keyed by its inputs):
   mmdebstrap from the machine's OWN apt sources (tests/debian_chroot.apt_sources:
   the files themselves go to mmdebstrap, no mirror host is written anywhere) with
   systemd, cloud-init, the cloud kernel and ifupdown -- what a Debian cloud image
   has -- plus, standing in for HashiCorp's packages (no Nomad or Consul binary can
   be had here), the TEST-ONLY stand-in `nomad` and `consul` packages
   (tests/fake_nomad, tests/fake_consul): their agents check what the real ones
   need and print ``nomad-standin: OK …`` / ``consul-standin: OK …``. Test-only
   additions: cloud-init looks for NoCloud only (no cloud metadata probing), the
   locale is preset, and a report unit prints cloud-init's status, the package,
   the unit states, the addresses and the stand-ins' lines to the serial console,
   then powers off.
2. A server node's seed is built by `nomad-build build` from a cluster with Consul
   agents on ([consul.agent] enabled): the seed carries the node's nomad-config and
   consul-config packages; the node has a MAC and a static address, so the seed's
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
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import example_text, nomad_build
from debian_chroot import apt_sources
from fake_consul import build_fake_consul_deb
from fake_consul import parse_standin_line as parse_consul_line
from fake_nomad import build_fake_nomad_deb, parse_standin_line

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "boot"
LAYOUT = "4"  # bump when the way the image is made changes
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
# waits for cloud-init itself. The script is the third disk's contents (NUL-padded),
# so each boot brings its own checks and the cached image stays the same.
[Unit]
Description=nomad-build boot test: report to the serial console, then power off

[Service]
Type=simple
ExecStart=/usr/local/sbin/nomad-build-boot-report

[Install]
WantedBy=multi-user.target
"""
REPORT_RUNNER = """\
#!/bin/sh
# TEST IMAGE ONLY (nomad-build boot test): run the boot's report script from /dev/vdc.
i=0
while [ $i -lt 30 ] && [ ! -b /dev/vdc ]; do sleep 1; i=$((i + 1)); done
tr -d '\\000' </dev/vdc >/run/nomad-build-boot-report
exec sh /run/nomad-build-boot-report
"""
REPORT_SCRIPT = """\
#!/bin/sh
# TEST ONLY (nomad-build boot test): what the test reads off the console.
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
consul_standin() { journalctl -u consul.service -o cat --no-pager | grep '^consul-standin: '; }
i=0
while [ $i -lt @WAIT@ ] && ! { standin && consul_standin; } >/dev/null; do
    sleep 1; i=$((i + 1))
done
sleep 1
say "package: $(dpkg-query -W -f='${Package} ${Version} ${Status}' 'nomad-config-*' 2>&1)"
say "enabled: $(systemctl is-enabled nomad.service 2>&1)"
say "active: $(systemctl is-active nomad.service 2>&1)"
say "consul-package: $(dpkg-query -W -f='${Package} ${Version} ${Status}' 'consul-config-*' 2>&1)"
say "consul-enabled: $(systemctl is-enabled consul.service 2>&1)"
say "consul-active: $(systemctl is-active consul.service 2>&1)"
pid=$(systemctl show -p MainPID --value consul.service)
say "consul-process: $(ps -o user=,group=,args= -p "$pid" 2>&1)"
say "installer-enabled: $(systemctl is-enabled nomad-build-install.service 2>&1)"
say "installer-active: $(systemctl is-active nomad-build-install.service 2>&1)"
say "pending: $(test -e /var/lib/nomad-build/install-pending && echo yes || echo no)"
say "hostname: $(hostname) $(hostname -f 2>&1)"
say "keys: $(cat /home/ops/.ssh/authorized_keys 2>&1 | wc -l)"
say "uptime: $(cut -d' ' -f1 /proc/uptime)"
say "boots: $(journalctl --list-boots --no-pager 2>/dev/null | grep -cE '^ *-?[0-9]+ ')"
ip -o -4 addr show | while read -r n ifc fam addr rest; do say "addr: $ifc $addr"; done
grep -v '^#' /etc/resolv.conf | while read -r line; do say "resolv: $line"; done
say "resolves: $(getent hosts @LOOKUP@ 2>&1 | head -n 1)"
journalctl -t nomad-build-install -o cat --no-pager | while read -r line; do
    say "install-log: $line"
done
standin | while read -r line; do say "agent: $line"; done
consul_standin | while read -r line; do say "consul-agent: $line"; done
say "end"
systemctl poweroff
"""
TEST_FILES = {
    "etc/fstab": ("/dev/vda / ext4 rw,errors=remount-ro 0 1\n", 0o644),
    "etc/default/locale": ("LANG=C.UTF-8\n", 0o644),
    "etc/cloud/cloud.cfg.d/05-nomad-build-test.cfg": (CLOUD_CFG, 0o644),
    "etc/systemd/system/nomad-build-boot-report.service": (REPORT_UNIT, 0o644),
    "usr/local/sbin/nomad-build-boot-report": (REPORT_RUNNER, 0o755),
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


def _cache_key(sources: list[Path], standins: list[bytes]) -> str:
    h = hashlib.sha256()
    version = _run([need("mmdebstrap"), "--version"], "mmdebstrap --version").stdout
    for part in (LAYOUT, SUITE, ",".join(PACKAGES), version, os.uname().machine):
        h.update(part.encode() + b"\0")
    for src in sources:
        h.update(str(src).encode() + b"\0" + src.read_bytes() + b"\0")
    for path, (text, mode) in sorted(TEST_FILES.items()):
        h.update(f"{path}\0{mode}\0{text}\0".encode())
    for standin in standins:
        h.update(standin + b"\0")
    return h.hexdigest()[:16]


def base_image(tmp: Path) -> tuple[Path, Path, Path]:
    """(root.img, vmlinuz, initrd.img) of the cached test image, built on first use."""
    if os.geteuid() != 0:
        pytest.fail("the boot image is built as root (mmdebstrap to a directory, chroot)")
    need("mke2fs")
    standins = [build_fake_nomad_deb(tmp / "standin"), build_fake_consul_deb(tmp / "standin")]
    sources = apt_sources()
    CACHE.mkdir(parents=True, exist_ok=True)
    done = CACHE / _cache_key(sources, [d.read_bytes() for d in standins])
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
            _build(work, sources, standins)
            os.replace(work, done)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for old in CACHE.iterdir():  # one image at a time
            if old.is_dir() and old != done and ".partial-" not in old.name:
                shutil.rmtree(old, ignore_errors=True)
    return files


def _build(work: Path, sources: list[Path], standins: list[Path]) -> None:
    root = work / "root"
    _run(
        [need("mmdebstrap"), "--quiet", "--variant=apt", f"--include={','.join(PACKAGES)}",
         SUITE, str(root), *map(str, sources)],
        "mmdebstrap",
    )  # fmt: skip
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    for standin in standins:
        shutil.copy(standin, root / "tmp" / standin.name)
    inside = [f"/tmp/{d.name}" for d in standins]
    _run(["chroot", str(root), "dpkg", "-i", *inside], "stand-ins install", env=env)
    for standin in standins:
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


def cluster_text(extra_packages: str = "") -> str:
    """The example on Debian with Consul agents on, NODE with a MAC, a static address
    and the cluster's DNS."""
    text = re.sub(
        r"^ssh_keys = .*$",
        f"ssh_keys = {json.dumps(list(KEYS))}",
        example_text("debian"),
        count=1,
        flags=re.M,
    )
    if extra_packages:
        text = text.replace('maintainer = "', extra_packages + 'maintainer = "', 1)
    assert text.count("\n[packages]\n") == 1
    text = text.replace("\n[packages]\n", "\n[consul.agent]\nenabled = true\n\n[packages]\n")
    node_line = f'name = "{NODE}"\nrole = "server"\naddress = "{ADDRESS}"\n'
    assert node_line in text
    return text.replace(
        node_line,
        node_line + f'mac = "{MAC}"\nprefix = 24\ngateway = "{GATEWAY}"\n'
        f'nameservers = ["{GATEWAY}"]\n',
    )


def build_seed(tmp: Path) -> bytes:
    """NODE's seed (its packages embedded), made by `nomad-build build`."""
    (tmp / "cluster.toml").write_text(cluster_text())
    r = nomad_build(tmp, "build", "-c", "cluster.toml", env={"SOURCE_DATE_EPOCH": str(MTIME)})
    assert r.returncode == 0, r.stdout + r.stderr
    return (tmp / "dist" / "images" / NODE / "seed.iso").read_bytes()


# ------------------------------------------------------------ the host side of the net
# The VM's user network is the node's own: 10.20.130.0/24, the host (and gateway) at
# GATEWAY. Whatever the guest sends to GATEWAY reaches the host's 127.0.0.1 (QEMU's
# user networking), so a server bound to 127.0.0.1 is reachable at GATEWAY, and
# nothing else on the host is. The cluster's nameserver is GATEWAY: the DNS server
# below answers REPO_NAME and refuses the rest (so no lookup waits on a timeout).
GATEWAY = "10.20.130.1"
REPO_NAME = "repo.intra.terror.ninja"


class FakeDNS:
    """A tiny UDP DNS server on 127.0.0.1:53: REPO_NAME A -> GATEWAY, NXDOMAIN otherwise.
    `asked` lists every (name, qtype) asked (the proof the guest used it)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind(("127.0.0.1", 53))
        except OSError as e:
            pytest.fail(f"the boot test's DNS server cannot listen on 127.0.0.1:53: {e}")
        self.sock.settimeout(0.5)
        self.asked: list[tuple[str, int]] = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                data, peer = self.sock.recvfrom(1500)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._answer(data)
            if reply:
                self.sock.sendto(reply, peer)

    def _answer(self, q: bytes) -> bytes | None:
        if len(q) < 12:
            return None
        labels, i = [], 12
        while i < len(q) and q[i]:
            labels.append(q[i + 1 : i + 1 + q[i]].decode("ascii", "replace"))
            i += 1 + q[i]
        qtype = int.from_bytes(q[i + 1 : i + 3], "big")
        question = q[12 : i + 5]
        name = ".".join(labels).lower()
        self.asked.append((name, qtype))
        ours = name == REPO_NAME
        flags = 0x8180 if ours else 0x8183  # response, RD+RA; rcode 0 or NXDOMAIN
        answers = b""
        if ours and qtype == 1:
            answers = (
                b"\xc0\x0c" + (1).to_bytes(2, "big") + (1).to_bytes(2, "big")
                + (60).to_bytes(4, "big") + (4).to_bytes(2, "big")
                + bytes(int(x) for x in GATEWAY.split("."))
            )  # fmt: skip
        count = 1 if answers else 0
        header = q[:2] + flags.to_bytes(2, "big") + b"\x00\x01" + count.to_bytes(2, "big")
        return header + b"\x00\x00\x00\x00" + question + answers

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=5)
        self.sock.close()


def boot(
    tmp: Path,
    seed: bytes,
    *,
    wait: int,
    timeout: int,
    watch: Callable[[str], None] | None = None,
) -> tuple[dict[str, list[str]], str, float]:
    """Boot the cached image with `seed`; (report fields, console, seconds). `watch` is
    called with the console text as it grows, while the VM runs."""
    qemu = need("qemu-system-x86_64")
    qemu_img = need("qemu-img")
    image, kernel, initrd = base_image(tmp)
    (tmp / "seed.iso").write_bytes(seed)
    script = REPORT_SCRIPT.replace("@WAIT@", str(wait)).replace("@LOOKUP@", REPO_NAME).encode()
    (tmp / "report.img").write_bytes(script + b"\0" * (-len(script) % 4096 or 4096))
    overlay = tmp / "disk.qcow2"
    _run(
        [qemu_img, "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "raw", str(overlay)],
        "qemu-img create",
    )
    serial = tmp / "serial.log"
    serial.write_bytes(b"")
    cmd = [
        qemu, "-accel", "tcg", "-m", "1024", "-smp", "2",
        "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{serial}",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-drive", f"file={tmp / 'seed.iso'},if=virtio,format=raw,readonly=on",
        "-drive", f"file={tmp / 'report.img'},if=virtio,format=raw,readonly=on",
        "-nic", f"user,model=virtio-net-pci,mac={MAC},net=10.20.130.0/24,host={GATEWAY}",
    ]  # fmt: skip
    started = time.monotonic()
    dns = FakeDNS()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while proc.poll() is None:
                if time.monotonic() - started > timeout:
                    proc.kill()
                    proc.wait()
                    pytest.fail(f"the VM did not power off within {timeout}s:\n{_tail(serial)}")
                if watch is not None:
                    watch(serial.read_text(errors="replace"))
                time.sleep(1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _, stderr = proc.communicate()
    finally:
        dns.close()
    took = time.monotonic() - started
    console = serial.read_text(errors="replace")
    assert proc.returncode == 0, stderr + _tail(serial)
    report = [m.group(1).strip() for m in re.finditer(r"REPORT (.*)", console)]
    assert report and report[-1] == "end", _tail(serial)
    fields: dict[str, list[str]] = {}
    for line in report:
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    fields["dns-asked"] = sorted({name for name, _ in dns.asked})
    return fields, console, took


def test_debian_vm_becomes_the_node_from_its_seed(tmp_path: Path) -> None:
    seed = build_seed(tmp_path)
    fields, console, took = boot(tmp_path, seed, wait=120, timeout=BOOT_TIMEOUT)

    fqdn = f"{NODE}.intra.terror.ninja"
    assert f"nomad-build: cloud-init finished on {fqdn}" in console  # our final_message
    assert fields["cloud-init"] == ["status: done"], fields.get("cloud-init-long")
    (pkg,) = fields["package"]
    assert re.fullmatch(rf"nomad-config-{NODE} 1 install ok installed", pkg), pkg
    assert fields["enabled"] == ["enabled"] and fields["active"] == ["active"], fields
    # the first-boot installer: both packages in on its first attempt, then out of the way
    assert fields["pending"] == ["no"], fields.get("install-log")
    assert fields["installer-enabled"] == ["disabled"], fields
    assert (
        "nomad-build-install: installed on attempt 1; nomad.service: active; "
        "consul.service: active" in fields["install-log"]
    ), fields
    assert fields["hostname"] == [f"{NODE} {fqdn}"]
    assert fields["keys"] == [str(len(KEYS))]  # the admin user and its SSH keys
    assert f"eth1 {ADDRESS}/24" in fields["addr"], fields["addr"]  # matched by MAC, renamed
    agent = fields["agent"]
    assert agent, "the stand-in agent printed nothing:\n" + _tail(tmp_path / "serial.log")
    standin = parse_standin_line(agent[0])
    assert standin["user"] == "nomad"
    assert standin["server"] == "true"
    _assert_consul_runs(fields)
    print(f"boot test: VM powered off after {took:.0f}s; agent: {agent[0]}")


def _assert_consul_runs(fields: dict[str, list[str]]) -> None:
    """consul-config-NODE is in, and HashiCorp's consul.service (the stand-in) runs the
    shipped configuration as user consul: its OK line says what it checked."""
    (pkg,) = fields["consul-package"]
    assert re.fullmatch(rf"consul-config-{NODE} 1 install ok installed", pkg), pkg
    assert fields["consul-enabled"] == ["enabled"], fields
    assert fields["consul-active"] == ["active"], fields
    (process,) = fields["consul-process"]
    user, group, *argv = process.split()
    assert (user, group) == ("consul", "consul"), process
    assert argv[-2:] == ["agent", "-config-file=/etc/consul.d/nomad-build.json"], process
    agent = fields.get("consul-agent")
    assert agent, "the stand-in consul printed nothing"
    standin = parse_consul_line(agent[0])
    assert standin["user"] == "consul" and standin["server"] == "true", standin
    assert standin["node_name"] == NODE and standin["tls"] == "true", standin
    assert standin["encrypt"] == "true" and standin["data_dir"] == "/opt/consul", standin
    assert standin["configs"] == "/etc/consul.d/nomad-build.json", standin


@pytest.fixture(scope="module")
def repo_boot(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[str]], str]:
    """ONE boot for the repository and DNS checks: NODE's seed (from `nomad-build build`)
    installs from the signed repository at http://REPO_NAME:<port>/, a name only the
    cluster's nameserver knows. The repository is NOT served at first: the test starts
    serving dist/repo/ once the first-boot installer has failed twice."""
    import functools
    import http.server
    import socket
    import threading

    tmp = tmp_path_factory.mktemp("repo-boot")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://{REPO_NAME}:{port}/debian"
    (tmp / "cluster.toml").write_text(cluster_text(f'repo_url = "{url}"\n'))
    r = nomad_build(tmp, "build", "-c", "cluster.toml")
    assert r.returncode == 0, r.stdout + r.stderr
    seed = (tmp / "dist" / "images" / NODE / "seed.iso").read_bytes()
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp / "dist" / "repo")
    )
    served: list[http.server.ThreadingHTTPServer] = []

    def watch(console: str) -> None:
        if not served and "nomad-build-install: attempt 2 failed" in console:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            served.append(server)

    try:
        fields, console, took = boot(tmp, seed, wait=300, timeout=420, watch=watch)
    finally:
        for server in served:
            server.shutdown()
            server.server_close()
    assert served, "the installer never reported two failed attempts:\n" + _tail(tmp / "serial.log")
    print(f"repository boot: VM powered off after {took:.0f}s")
    return fields, console


def test_first_boot_retries_until_the_repository_is_up(
    repo_boot: tuple[dict[str, list[str]], str],
) -> None:
    fields, console = repo_boot
    log = [x.removeprefix("nomad-build-install: ") for x in fields["install-log"]]
    failed = [x for x in log if re.match(r"attempt \d+ failed: ", x)]
    assert len(failed) >= 2, log  # kept trying while the repository was down
    assert "next try in 5s" in failed[0] and "next try in 10s" in failed[1], failed
    (done,) = [x for x in log if x.startswith("installed on attempt ")]
    assert int(done.split()[3].rstrip(";")) == len(failed) + 1, log
    assert done.endswith("nomad.service: active; consul.service: active"), done
    assert "nomad-build-install: attempt 1 failed" in console  # on the console as it happens
    assert fields["cloud-init"] == ["status: done"], fields.get("cloud-init-long")
    (pkg,) = fields["package"]
    assert re.fullmatch(rf"nomad-config-{NODE} 1 install ok installed", pkg), pkg
    assert fields["active"] == ["active"] and fields["enabled"] == ["enabled"], fields
    assert fields["pending"] == ["no"] and fields["installer-enabled"] == ["disabled"], fields
    assert fields["boots"] == ["1"]  # no reboot
    standin = parse_standin_line(fields["agent"][0])
    assert standin["server"] == "true"
    _assert_consul_runs(fields)  # consul-config-NODE came from the repository too


def test_the_guest_resolves_with_the_clusters_nameservers(
    repo_boot: tuple[dict[str, list[str]], str],
) -> None:
    fields, _ = repo_boot
    resolv = fields["resolv"]
    assert [x for x in resolv if x.startswith("nameserver ")] == [f"nameserver {GATEWAY}"]
    assert "search intra.terror.ninja" in resolv
    assert [x.split() for x in fields["resolves"]] == [[GATEWAY, REPO_NAME]], fields["resolves"]
    assert REPO_NAME in fields["dns-asked"]  # asked OUR server, the cluster's nameserver


def _tail(path: Path, lines: int = 80) -> str:
    if not path.exists():
        return "(no serial output)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
