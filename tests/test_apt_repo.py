"""The signed apt repository (builder.writers.apt_repo), checked with Debian's own tools.

- every index against the files it describes, recomputed here (no apt-ftparchive);
- the Packages stanzas against dpkg-scanpackages' and dpkg-deb's reading of the same .debs;
- Release.gpg / InRelease with gpgv and the exported keyring;
- apt itself (an isolated apt configuration on this machine, and a bookworm chroot):
  `apt-get update` + `apt-get install` through the generated nomad-build.sources, and
  refusal after one byte of InRelease, Release or Packages is changed.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from builder import openpgp
from builder.errors import BuildError
from builder.writers import Artifact
from builder.writers.apt_repo import (
    KEYRING_FILE,
    KEYRING_PATH,
    REPO_DIR,
    SOURCES_FILE,
    build_apt_repo,
    deb_control,
    parse_control,
)
from builder.writers.deb import build_deb

import debian_chroot
from conftest import render_all
from fake_nomad import STANDIN_VERSION, build_fake_nomad_deb

MTIME = 1_700_000_000
KEY_TIME = MTIME - 3600
SUITE, COMPONENT = "stable", "main"


# ---------------------------------------------------------------- helpers


def real_debs(directory: Path, *, version: int = 1) -> list[Artifact]:
    """Every example node's .deb, rendered for Debian and written by builder.writers.deb."""
    r = render_all(directory, "debian")
    return [build_deb(r.node(n), t, version=version, mtime=MTIME) for n, t in r.trees.items()]


def dpkg_deb_build(
    tmp: Path, package: str, version: str, arch: str = "all", **extra: str
) -> Artifact:
    """A small .deb built by dpkg-deb itself (not by our writer)."""
    root = tmp / f"{package}_{version}_{arch}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share/doc" / package).mkdir(parents=True)
    (root / "usr/share/doc" / package / "README").write_text(f"{package} {version}\n")
    fields = {
        "Package": package,
        "Version": version,
        "Architecture": arch,
        "Maintainer": "nomad-build tests <tests@example.org>",
        **extra,
        "Description": f"test package {package}\n stand-in built by tests/test_apt_repo.py",
    }
    (root / "DEBIAN/control").write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
    out = tmp / f"{package}_{version.split(':')[-1]}_{arch}.deb"  # no epoch in file names
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "SOURCE_DATE_EPOCH": str(MTIME)},
    )
    return Artifact(f"debian/{out.name}", out.read_bytes(), secret=False)


def write(artifacts: list[Artifact], dist: Path) -> Path:
    for a in artifacts:
        p = dist / a.path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(a.data)
    return dist / REPO_DIR


def stanzas(text: bytes) -> list[dict[str, str]]:
    return [dict(parse_control(s.encode())) for s in text.decode().strip("\n").split("\n\n")]


def release_files(release: bytes) -> dict[str, dict[str, tuple[str, int]]]:
    """{"MD5Sum": {path: (hash, size)}, "SHA256": {...}} from a Release file."""
    out: dict[str, dict[str, tuple[str, int]]] = {}
    current: dict[str, tuple[str, int]] | None = None
    for line in release.decode().splitlines():
        if not line.startswith(" "):
            current = None
            name = line.split(":", 1)[0]
            if name in ("MD5Sum", "SHA1", "SHA256", "SHA512"):
                current = out.setdefault(name, {})
            continue
        assert current is not None, line
        digest, size, path = line.split()
        current[path] = (digest, int(size))
    return out


@pytest.fixture(scope="module")
def key() -> bytes:
    return openpgp.generate_key("nomad-build test-cluster", created=KEY_TIME)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> list[Artifact]:
    tmp = tmp_path_factory.mktemp("debs")
    return [
        dpkg_deb_build(tmp, "nomad-config-alpha", "3", Depends="adduser"),
        dpkg_deb_build(tmp, "nomad-config-beta", "1:2.0~rc1-1"),
        dpkg_deb_build(tmp, "libnomad-test", "0.1", arch="amd64"),
        dpkg_deb_build(tmp, "nomad", "1.7.0-1"),
    ]


@pytest.fixture(scope="module")
def repo(synthetic: list[Artifact], key: bytes) -> list[Artifact]:
    return build_apt_repo(synthetic, suite=SUITE, component=COMPONENT, signing_key=key, mtime=MTIME)


# ---------------------------------------------------------------- structure


def test_layout(repo: list[Artifact]) -> None:
    paths = sorted(a.path for a in repo)
    assert paths == sorted(
        f"{REPO_DIR}/{p}"
        for p in [
            "pool/main/libn/libnomad-test/libnomad-test_0.1_amd64.deb",
            "pool/main/n/nomad/nomad_1.7.0-1_all.deb",
            "pool/main/n/nomad-config-alpha/nomad-config-alpha_3_all.deb",
            "pool/main/n/nomad-config-beta/nomad-config-beta_2.0~rc1-1_all.deb",
            "dists/stable/main/binary-all/Packages",
            "dists/stable/main/binary-all/Packages.gz",
            "dists/stable/main/binary-amd64/Packages",
            "dists/stable/main/binary-amd64/Packages.gz",
            "dists/stable/Release",
            "dists/stable/Release.gpg",
            "dists/stable/InRelease",
            KEYRING_FILE,  # (no SOURCES_FILE: this repository has no repo_url)
        ]
    )


def test_packages_describe_the_pool_files(repo: list[Artifact], synthetic: list[Artifact]) -> None:
    by_path = {a.path: a for a in repo}
    seen = set()
    for arch in ("all", "amd64"):
        base = f"{REPO_DIR}/dists/{SUITE}/{COMPONENT}/binary-{arch}/Packages"
        packages = by_path[base].data
        assert gzip.decompress(by_path[base + ".gz"].data) == packages
        for st in stanzas(packages):
            assert st["Architecture"] == arch
            deb = by_path[f"{REPO_DIR}/{st['Filename']}"].data
            assert int(st["Size"]) == len(deb)
            assert st["MD5sum"] == hashlib.md5(deb).hexdigest()
            assert st["SHA256"] == hashlib.sha256(deb).hexdigest()
            seen.add(st["Package"])
            # Every other field is the package's own control field.
            control = dict(parse_control(deb_control(deb)))
            assert {k: v for k, v in st.items() if k not in _REPO_FIELDS} == control
    assert seen == {"nomad", "nomad-config-alpha", "nomad-config-beta", "libnomad-test"}
    # the pool files are the input debs, byte for byte
    assert {a.data for a in synthetic} == {a.data for a in repo if a.path.endswith(".deb")}


_REPO_FIELDS = {"Filename", "Size", "MD5sum", "SHA256"}


def test_control_fields_as_dpkg_deb_reads_them(synthetic: list[Artifact], tmp_path: Path) -> None:
    for a in synthetic:
        p = tmp_path / "x.deb"
        p.write_bytes(a.data)
        r = subprocess.run(["dpkg-deb", "--field", str(p)], capture_output=True, check=True)
        assert dict(parse_control(deb_control(a.data))) == dict(parse_control(r.stdout))


def test_packages_equal_dpkg_scanpackages(repo: list[Artifact], tmp_path: Path) -> None:
    """dpkg-scanpackages over the written pool gives the same stanzas (less its SHA1/SHA512)."""
    root = write(repo, tmp_path)
    for arch in ("all", "amd64"):
        r = subprocess.run(
            ["dpkg-scanpackages", "--multiversion", "--arch", arch, "pool", "/dev/null"],
            cwd=root,
            capture_output=True,
            check=True,
        )
        want = sorted(
            (
                {k: v for k, v in st.items() if k not in ("SHA1", "SHA512")}
                for st in stanzas(r.stdout)
                if st["Architecture"] == arch
            ),
            key=lambda s: s["Package"],
        )
        ours = (root / f"dists/{SUITE}/{COMPONENT}/binary-{arch}/Packages").read_bytes()
        assert want and stanzas(ours) == want


def test_release_lists_every_index_with_its_hashes(repo: list[Artifact]) -> None:
    by_path = {a.path: a for a in repo}
    dists = f"{REPO_DIR}/dists/{SUITE}/"
    release = by_path[dists + "Release"].data
    fields = dict(parse_control(b"\n".join(release.split(b"\n")[:9])))
    assert fields["Origin"] == "nomad-build"
    assert fields["Label"] == "nomad-build test-cluster"
    assert fields["Suite"] == fields["Codename"] == SUITE
    assert fields["Components"] == COMPONENT
    assert fields["Architectures"] == "all amd64"
    assert fields["Acquire-By-Hash"] == "no"
    assert fields["Date"] == "Tue, 14 Nov 2023 22:13:20 UTC"
    assert email.utils.parsedate_to_datetime(fields["Date"]).timestamp() == MTIME
    listed = release_files(release)
    indexes = {
        a.path.removeprefix(dists): a.data
        for a in repo
        if a.path.startswith(dists) and "/binary-" in a.path
    }
    assert set(listed) == {"MD5Sum", "SHA256"}
    for name, fn in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        assert listed[name] == {p: (fn(d).hexdigest(), len(d)) for p, d in indexes.items()}
    assert len(indexes) == 4


def test_signatures_verify_with_gpgv_and_the_exported_keyring(
    repo: list[Artifact], tmp_path: Path
) -> None:
    root = write(repo, tmp_path)
    dists = root / f"dists/{SUITE}"
    keyring = root / KEYRING_FILE
    r = subprocess.run(
        ["gpgv", "--keyring", str(keyring), str(dists / "Release.gpg"), str(dists / "Release")],
        capture_output=True,
    )
    assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run(
        ["gpgv", "--keyring", str(keyring), "--output", "-", str(dists / "InRelease")],
        capture_output=True,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == (dists / "Release").read_bytes()  # InRelease signs exactly Release


def test_sources_file(repo: list[Artifact], key: bytes, synthetic: list[Artifact]) -> None:
    # without packages.repo_url there is no source at all (never a placeholder URL)
    assert not [a for a in repo if a.path.endswith(SOURCES_FILE)]
    given = build_apt_repo(
        synthetic,
        suite=SUITE,
        component=COMPONENT,
        signing_key=key,
        mtime=MTIME,
        repo_url="https://pkg.example.org/nomad/debian/",
    )
    text = next(a for a in given if a.path.endswith(SOURCES_FILE)).data.decode()
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == [
        "Types: deb",
        "URIs: https://pkg.example.org/nomad/debian",
        f"Suites: {SUITE}",
        f"Components: {COMPONENT}",
        f"Signed-By: {KEYRING_PATH}",
    ]
    assert openpgp.fingerprint(key) in text


def test_keyring_is_the_public_key(repo: list[Artifact], key: bytes) -> None:
    ring = next(a for a in repo if a.path == f"{REPO_DIR}/{KEYRING_FILE}")
    assert ring.data == openpgp.public_keyring(key) and not ring.secret


def test_secret_debs_stay_secret_and_indexes_are_public(
    key: bytes, synthetic: list[Artifact]
) -> None:
    secret = [
        Artifact(a.path, a.data, secret=a.path.endswith("alpha_3_all.deb")) for a in synthetic
    ]
    out = build_apt_repo(secret, suite=SUITE, component=COMPONENT, signing_key=key, mtime=MTIME)
    flagged = [a.path for a in out if a.secret]
    assert flagged == [f"{REPO_DIR}/pool/main/n/nomad-config-alpha/nomad-config-alpha_3_all.deb"]


def test_deterministic_whatever_the_input_order(key: bytes, synthetic: list[Artifact]) -> None:
    def build(debs: list[Artifact]) -> list[Artifact]:
        return build_apt_repo(debs, suite=SUITE, component=COMPONENT, signing_key=key, mtime=MTIME)

    a, b = build(synthetic), build(list(reversed(synthetic)))
    assert a == b
    assert [x.path for x in a] == sorted(x.path for x in a if "/pool/" in x.path) + [
        x.path for x in a if "/pool/" not in x.path
    ]
    later = build_apt_repo(
        synthetic, suite=SUITE, component=COMPONENT, signing_key=key, mtime=MTIME + 1
    )
    changed = {x.path for x, y in zip(a, later, strict=True) if x.data != y.data}
    assert changed == {
        f"{REPO_DIR}/dists/{SUITE}/{n}" for n in ("Release", "Release.gpg", "InRelease")
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: [d[0], d[0]], "two packages"),
        (lambda d: [Artifact("debian/x.tgz", d[0].data, False)], "not a .deb"),
        (lambda d: [Artifact("debian/x.deb", b"!<arch>\nrubbish", False)], "corrupt ar"),
        (lambda d: [Artifact("debian/x.deb", d[0].data[:200], False)], "truncated|unreadable"),
        (lambda d: [], "at least one"),
    ],
)
def test_bad_input_is_refused(
    change: Callable[[list[Artifact]], list[Artifact]],
    message: str,
    key: bytes,
    synthetic: list[Artifact],
) -> None:
    with pytest.raises(BuildError, match=message):
        build_apt_repo(
            change(synthetic), suite=SUITE, component=COMPONENT, signing_key=key, mtime=MTIME
        )


@pytest.mark.parametrize("bad", ["a b", "../x", "x/y", ""])
def test_bad_suite_or_component_is_refused(bad: str, key: bytes, synthetic: list[Artifact]) -> None:
    with pytest.raises(BuildError):
        build_apt_repo(synthetic, suite=bad, component=COMPONENT, signing_key=key, mtime=MTIME)
    with pytest.raises(BuildError):
        build_apt_repo(synthetic, suite=SUITE, component=bad, signing_key=key, mtime=MTIME)


# ---------------------------------------------------------------- apt, isolated on this machine


class HostApt:
    """apt-get/apt-cache on this machine with a private configuration (APT_CONFIG, read
    before apt.conf.d): only our source, private lists and cache, no other keys; the
    machine's dpkg status answers Depends for --simulate. Nothing outside `root` changes."""

    def __init__(self, root: Path, sources: str) -> None:
        self.root = root
        for d in (
            "parts",
            "sources",
            "prefs",
            "trusted",
            "lists/partial",
            "cache/archives/partial",
        ):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "sources" / SOURCES_FILE).write_text(sources)
        conf = {
            "Dir::Etc::Parts": root / "parts",
            "Dir::Etc::main": "/dev/null",
            "Dir::Etc::SourceList": "/dev/null",
            "Dir::Etc::SourceParts": root / "sources",
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": root / "prefs",
            "Dir::Etc::Trusted": "/dev/null",
            "Dir::Etc::TrustedParts": root / "trusted",
            "Dir::State::Lists": root / "lists",
            "Dir::Cache": root / "cache",
            "Dir::Log": root,
            "Debug::NoLocking": "true",
            "APT::Sandbox::User": "root",  # _apt cannot enter pytest's 0700 tmp dirs
        }
        (root / "apt.conf").write_text("".join(f'{k} "{v}";\n' for k, v in conf.items()))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
               "APT_CONFIG": str(self.root / "apt.conf")}  # fmt: skip
        return subprocess.run(
            list(args), capture_output=True, text=True, env=env, check=False, cwd=self.root
        )

    def fresh_update(self) -> subprocess.CompletedProcess[str]:
        """apt-get update with no lists from before (apt keeps the last good ones)."""
        shutil.rmtree(self.root / "lists")
        (self.root / "lists/partial").mkdir(parents=True)
        return self.run("apt-get", "update")

    def candidate(self, package: str) -> str:
        r = self.run("apt-cache", "policy", package)
        m = re.search(r"^  Candidate: (.*)$", r.stdout, re.M)
        return m.group(1) if m else "(none)"


def _host_repo(tmp_path: Path, synthetic: list[Artifact], key: bytes) -> tuple[Path, HostApt]:
    dist = tmp_path / "dist"
    out = build_apt_repo(
        synthetic,
        suite=SUITE,
        component=COMPONENT,
        signing_key=key,
        mtime=MTIME,
        repo_url=f"file:{dist / REPO_DIR}",
    )
    root = write(out, dist)
    sources = (root / SOURCES_FILE).read_text()
    assert f"Signed-By: {KEYRING_PATH}\n" in sources
    # The generated snippet as is, but for where this test keeps the keyring.
    sources = sources.replace(KEYRING_PATH, str(root / KEYRING_FILE))
    return root, HostApt(tmp_path / "apt", sources)


def test_apt_reads_the_signed_repository(
    tmp_path: Path, synthetic: list[Artifact], key: bytes
) -> None:
    _, apt = _host_repo(tmp_path, synthetic, key)
    r = apt.fresh_update()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "W:" not in r.stderr and "N:" not in r.stderr, r.stderr  # no notice about 'all'
    assert apt.candidate("nomad-config-alpha") == "3"
    assert apt.candidate("nomad-config-beta") == "1:2.0~rc1-1"
    assert apt.candidate("nomad") == "1.7.0-1"
    r = apt.run("apt-get", "install", "--simulate", "nomad-config-alpha")
    assert r.returncode == 0 and "Inst nomad-config-alpha (3 " in r.stdout, r.stdout + r.stderr
    # apt checked the .deb against the Packages hashes when it fetched it
    r = apt.run("apt-get", "download", "nomad-config-alpha")
    assert r.returncode == 0, r.stdout + r.stderr
    got = (apt.root / "nomad-config-alpha_3_all.deb").read_bytes()
    assert got == next(a.data for a in synthetic if "alpha" in a.path)


def _flip(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) >= 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new, 1))


@pytest.mark.parametrize(
    "attack", ["InRelease", "Release, no InRelease", "Packages", "Packages.gz", "Release.gpg"]
)
def test_apt_update_refuses_a_changed_byte(
    attack: str, tmp_path: Path, synthetic: list[Artifact], key: bytes
) -> None:
    root, apt = _host_repo(tmp_path, synthetic, key)
    dists = root / f"dists/{SUITE}"
    packages = dists / f"{COMPONENT}/binary-all/Packages"
    sha = hashlib.sha256(packages.read_bytes()).hexdigest().encode()
    if attack == "InRelease":  # one hex digit of a listed hash, inside the signed text
        _flip(dists / "InRelease", sha[:8], sha[:7] + (b"0" if sha[7:8] != b"0" else b"1"))
        want = "BADSIG"
    elif attack == "Release, no InRelease":  # apt falls back to Release + Release.gpg
        (dists / "InRelease").unlink()
        _flip(dists / "Release", b"Suite: stable", b"Suite: stablf")
        want = "BADSIG"
    elif attack == "Release.gpg":
        (dists / "InRelease").unlink()
        sig = bytearray(openpgp.dearmor((dists / "Release.gpg").read_bytes(), "PGP SIGNATURE"))
        sig[-3] ^= 0x01
        (dists / "Release.gpg").write_bytes(openpgp.armor("PGP SIGNATURE", bytes(sig)))
        want = "BADSIG"
    elif attack == "Packages":  # a consistent attacker: Packages.gz made from it too
        _flip(packages, b"Version: 3\n", b"Version: 4\n")
        packages.with_suffix(".gz").write_bytes(gzip.compress(packages.read_bytes(), mtime=0))
        want = "Hash Sum mismatch"
    else:
        gz = packages.with_suffix(".gz")
        data = bytearray(gz.read_bytes())
        data[len(data) // 2] ^= 0x01
        gz.write_bytes(bytes(data))
        want = "Hash Sum mismatch"  # apt fetches Packages.gz, compares the listed hash
    r = apt.fresh_update()
    out = r.stdout + r.stderr
    assert r.returncode == 100, out
    assert want in out, out
    if want == "BADSIG":
        assert "E: The repository" in out and "is not signed" in out, out
    # and nothing from the repository can be installed
    assert apt.candidate("nomad-config-alpha") == "(none)"
    r = apt.run("apt-get", "install", "--simulate", "nomad-config-alpha")
    assert r.returncode == 100 and "Unable to locate package" in r.stderr, r.stdout + r.stderr


def test_apt_refuses_a_changed_deb(tmp_path: Path, synthetic: list[Artifact], key: bytes) -> None:
    root, apt = _host_repo(tmp_path, synthetic, key)
    deb = next(root.glob("pool/main/n/nomad-config-alpha/*.deb"))
    data = bytearray(deb.read_bytes())
    data[-10] ^= 0x01
    deb.write_bytes(bytes(data))
    assert apt.fresh_update().returncode == 0
    r = apt.run("apt-get", "download", "nomad-config-alpha")
    assert r.returncode == 100 and "Hash Sum mismatch" in r.stdout + r.stderr, r.stderr


def test_apt_refuses_another_keys_signature(
    tmp_path: Path, synthetic: list[Artifact], key: bytes
) -> None:
    root, apt = _host_repo(tmp_path, synthetic, key)
    other = openpgp.generate_key("someone else", created=KEY_TIME)
    dists = root / f"dists/{SUITE}"
    release = (dists / "Release").read_bytes()
    (dists / "InRelease").write_bytes(openpgp.clearsign(other, release, created=MTIME))
    (dists / "Release.gpg").write_bytes(openpgp.detached_signature(other, release, created=MTIME))
    r = apt.fresh_update()
    assert r.returncode == 100 and "NO_PUBKEY" in r.stdout + r.stderr, r.stdout + r.stderr
    assert apt.candidate("nomad-config-alpha") == "(none)"


# ---------------------------------------------------------------- the example cluster's packages


@pytest.fixture(scope="module")
def example_debs(tmp_path_factory: pytest.TempPathFactory) -> list[Artifact]:
    return real_debs(tmp_path_factory.mktemp("example"))


def test_example_cluster_repository(
    example_debs: list[Artifact], key: bytes, tmp_path: Path
) -> None:
    out = build_apt_repo(
        example_debs, suite=SUITE, component=COMPONENT, signing_key=key, mtime=MTIME
    )
    pool = {a.path: a for a in out if a.path.endswith(".deb")}
    assert len(pool) == len(example_debs) == 6
    for a in example_debs:
        name = a.path.removeprefix("debian/")
        pkg = name.split("_")[0]
        got = pool[f"{REPO_DIR}/pool/{COMPONENT}/n/{pkg}/{name}"]
        assert got.data == a.data and got.secret and a.secret  # node keys inside
    assert not [a.path for a in out if a.secret and not a.path.endswith(".deb")]
    root = write(out, tmp_path)
    packages = (root / f"dists/{SUITE}/{COMPONENT}/binary-all/Packages").read_bytes()
    r = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"],
        cwd=root,
        capture_output=True,
        check=True,
    )
    want = [
        {k: v for k, v in st.items() if k not in ("SHA1", "SHA512")} for st in stanzas(r.stdout)
    ]
    assert stanzas(packages) == sorted(want, key=lambda s: s["Package"])
    assert {st["Package"] for st in stanzas(packages)} == {
        a.path.removeprefix("debian/").split("_")[0] for a in example_debs
    }
    assert not (root / f"dists/{SUITE}/{COMPONENT}/binary-amd64").exists()
    assert "Architectures: all\n" in (root / f"dists/{SUITE}/Release").read_text()


def test_two_builds_from_the_same_state_are_byte_identical(tmp_path: Path, key: bytes) -> None:
    """The same cluster and state rendered and packaged twice: the same repository bytes."""
    runs = []
    for _ in range(2):
        debs = real_debs(tmp_path / "c")  # the second run reuses the first run's state/
        runs.append(
            build_apt_repo(debs, suite=SUITE, component=COMPONENT, signing_key=key, mtime=MTIME)
        )
    assert runs[0] == runs[1]
    assert len(runs[0]) == 6 + 6  # the pool, then indexes, Release x3 and the keyring


# ---------------------------------------------------------------- apt in a bookworm chroot

REPO_INSIDE = "/srv/nomad-build"  # the chroot's copy of dist/: repo/debian/ below it
NODE, OTHER_NODE = "bi-core-sbg-1", "bi-node-sbg-2"


@pytest.fixture(scope="module")
def chroot_repo(
    example_debs: list[Artifact], key: bytes, tmp_path_factory: pytest.TempPathFactory
) -> list[Artifact]:
    """The example cluster's packages and the TEST-ONLY stand-in `nomad` (tests/fake_nomad)
    in one repository, as it will be seen inside the chroot (file:, the .sources unchanged)."""
    stand_in = build_fake_nomad_deb(tmp_path_factory.mktemp("fake-nomad"))
    debs = [*example_debs, Artifact(f"debian/{stand_in.name}", stand_in.read_bytes(), False)]
    return build_apt_repo(
        debs,
        suite=SUITE,
        component=COMPONENT,
        signing_key=key,
        mtime=MTIME,
        repo_url=f"file://{REPO_INSIDE}/{REPO_DIR}",
    )


def _node_root(tmp_path: Path, repo: list[Artifact]) -> tuple[Path, Path]:
    """A fresh bookworm root set up as the .sources file's comments tell an operator."""
    root = debian_chroot.chroot(tmp_path)
    served = write(repo, root / REPO_INSIDE.lstrip("/"))  # .../repo/debian
    keyrings = root / "etc/apt/keyrings"
    keyrings.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(served / KEYRING_FILE, root / KEYRING_PATH.lstrip("/"))
    (root / KEYRING_PATH.lstrip("/")).chmod(0o644)
    shutil.copyfile(served / SOURCES_FILE, root / "etc/apt/sources.list.d" / SOURCES_FILE)
    # Only our source: everything the packages need is in the base or in our repository
    # (the stand-in nomad), so no test depends on a mirror being reachable.
    for other in (root / "etc/apt/sources.list.d").iterdir():
        if other.name != SOURCES_FILE:
            other.rename(other.with_name(other.name + ".disabled"))
    debian_chroot.deny_service_starts(root)
    return root, served


def _update(root: Path) -> subprocess.CompletedProcess[str]:
    for f in (root / "var/lib/apt/lists").glob("*"):  # apt would keep the last good lists
        if f.is_file() and f.name != "lock":
            f.unlink()
    return debian_chroot.run_in(root, "apt-get", "update", check=False)


@pytest.mark.slow
def test_apt_installs_a_node_package_from_the_signed_repository(
    chroot_repo: list[Artifact], tmp_path: Path
) -> None:
    root, _ = _node_root(tmp_path, chroot_repo)
    r = _update(root)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert not re.search(r"^(W|E|N):", out, re.M), out
    assert f"file:{REPO_INSIDE}/{REPO_DIR} {SUITE} InRelease" in out
    policy = debian_chroot.run_in(root, "apt-cache", "policy", f"nomad-config-{NODE}").stdout
    assert "Candidate: 1\n" in policy
    assert f"file:{REPO_INSIDE}/{REPO_DIR} {SUITE}/{COMPONENT} all Packages" in policy
    r = debian_chroot.run_in(
        root, "apt-get", "install", "-y", f"nomad-config-{NODE}", check=False, proc=True
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # -y would stop at unauthenticated packages; this chroot's lack of /dev/pts makes an
    # unrelated "E: Can not write log" line, so look for the authentication warning itself.
    assert "cannot be authenticated" not in out, out
    assert f"Get:1 file:{REPO_INSIDE}/{REPO_DIR} {SUITE}/{COMPONENT} all nomad all" in out
    status = debian_chroot.run_in(
        root, "dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}\n",
        f"nomad-config-{NODE}", "nomad",
    ).stdout  # fmt: skip
    assert sorted(status.splitlines()) == [
        f"nomad {STANDIN_VERSION} installed",
        f"nomad-config-{NODE} 1 installed",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("changed", ["Release", "Packages"])
def test_apt_in_the_chroot_refuses_a_changed_byte(
    changed: str, chroot_repo: list[Artifact], tmp_path: Path
) -> None:
    root, served = _node_root(tmp_path, chroot_repo)
    assert _update(root).returncode == 0  # the untouched repository is accepted
    dists = served / f"dists/{SUITE}"
    if changed == "Release":
        # The signed Release text in InRelease (what apt reads first) and the Release
        # file itself (its fallback, with Release.gpg): the same one byte in both.
        for f in ("InRelease", "Release"):
            _flip(dists / f, b"Components: main", b"Components: maio")
        want = "BADSIG"
    else:
        packages = dists / f"{COMPONENT}/binary-all/Packages"
        _flip(packages, b"Version: 1\n", b"Version: 2\n")
        packages.with_suffix(".gz").write_bytes(gzip.compress(packages.read_bytes(), mtime=0))
        want = "Hash Sum mismatch"
    r = _update(root)
    out = r.stdout + r.stderr
    assert r.returncode == 100, out
    assert want in out, out
    policy = debian_chroot.run_in(root, "apt-cache", "policy", f"nomad-config-{OTHER_NODE}")
    assert "Candidate: (none)" in policy.stdout or not policy.stdout.strip(), policy.stdout
    r = debian_chroot.run_in(
        root, "apt-get", "install", "-y", f"nomad-config-{OTHER_NODE}", check=False
    )
    assert r.returncode == 100, r.stdout + r.stderr
    assert f"Unable to locate package nomad-config-{OTHER_NODE}" in r.stderr
