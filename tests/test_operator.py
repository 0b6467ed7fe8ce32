"""The operator's view: what changed and why (text and JSON, validated against
docs/output.schema.json), warnings for artifacts that cannot work (--strict), the
manifest and signed checksums, and the CLI's conventions (--wait, version, examples,
completion of --node)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conftest import REPO, copy_tree, nomad_build, nomad_build_argv, nomad_env, write_cluster

SCHEMA = json.loads((REPO / "docs" / "output.schema.json").read_text())
CLUSTER = "cluster.toml"
SERVERS = ("bi-core-sbg-1", "bi-core-sbg-2", "bi-core-sbg-3")
CLIENTS = ("bi-node-sbg-1", "bi-node-sbg-2", "bi-node-sbg-3")


def run_json(directory: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = nomad_build(directory, *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    jsonschema.validate(doc, SCHEMA)
    return doc


def packages(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """node -> its package's change (the package writers' artifacts under openbsd/)."""
    return {a["node"]: a for a in doc["artifacts"] if a["path"].startswith(("openbsd/", "debian/"))}


def edit(directory: Path, old: str, new: str) -> None:
    path = directory / CLUSTER
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def built(tmp_path: Path, built_example: Callable[[str], Path]) -> Path:
    copy_tree(built_example("openbsd"), tmp_path)
    return tmp_path


# ---------------------------------------------------------------- change reports


def test_nothing_changed(built: Path) -> None:
    preview = run_json(built, "check")
    assert {a["status"] for a in preview["artifacts"]} == {"unchanged"}
    doc = run_json(built, "build")
    every = len(doc["artifacts"])  # and none of them rebuilt: each taken from the last build
    assert doc["summary"] == {"new": 0, "changed": 0, "unchanged": every, "reused": every}
    assert all(a["version_before"] == a["version_after"] == 1 for a in packages(doc).values())


def test_a_meta_change_is_that_node_and_its_config(built: Path) -> None:
    edit(built, '"edge"', '"edge-2"')  # bi-node-sbg-1's meta
    preview = packages(run_json(built, "check"))
    doc = run_json(built, "build")
    changed = {n: a for n, a in packages(doc).items() if a["status"] == "changed"}
    assert set(changed) == {"bi-node-sbg-1"}
    pkg = changed["bi-node-sbg-1"]
    assert (pkg["version_before"], pkg["version_after"]) == (1, 2)
    assert pkg["reasons"] == ["config changed: /etc/nomad/nomad.hcl"]
    assert pkg["path"] == "openbsd/nomad-config-bi-node-sbg_1-2.tgz"
    # check said the same before anything was written
    assert preview["bi-node-sbg-1"] == pkg
    assert all(a["status"] == "unchanged" for n, a in preview.items() if n != "bi-node-sbg-1")
    # the repository's index follows; nothing of the other nodes does
    others = [a for a in doc["artifacts"] if a["node"] not in (None, "bi-node-sbg-1")]
    assert {a["status"] for a in others} == {"unchanged"}
    index = {a["path"]: a["status"] for a in doc["artifacts"] if a["node"] is None}
    assert index["repo/openbsd/SHA256"] == "changed"


def test_an_address_change_reissues_that_certificate_and_moves_the_servers_firewall(
    built: Path,
) -> None:
    anchor = 'address = "10.20.131.42"\n'  # bi-node-sbg-2
    edit(built, anchor, anchor + 'extra_ips = ["10.9.9.9"]\n')
    preview = packages(run_json(built, "check"))
    assert preview["bi-node-sbg-2"]["reasons"] == [
        "certificate re-issued: IP addresses changed: +10.9.9.9"
    ]
    doc = run_json(built, "build")
    changes = packages(doc)
    assert changes["bi-node-sbg-2"]["reasons"][0] == (
        "certificate re-issued: IP addresses changed: +10.9.9.9"
    )
    for server in SERVERS:  # their pf anchor lets the new address in
        assert changes[server]["reasons"] == ["config changed: /etc/nomad/pf.anchor"], server
    for client in ("bi-node-sbg-1", "bi-node-sbg-3"):
        assert changes[client]["status"] == "unchanged"
    assert [e for e in doc["events"] if e["kind"] == "reissued"] == [
        {
            "kind": "reissued",
            "what": "certificate bi-node-sbg-2",
            "reason": "IP addresses changed: +10.9.9.9",
        }
    ]


def test_a_certificate_only_change_is_its_own_reason(built: Path) -> None:
    """A name only the certificate carries: the package changes for that reason alone."""
    anchor = 'address = "10.20.131.41"\n'  # bi-node-sbg-1
    edit(built, anchor, anchor + 'extra_names = ["edge-1.intra.terror.ninja"]\n')
    changes = packages(run_json(built, "build"))
    assert changes["bi-node-sbg-1"]["reasons"] == [
        "certificate re-issued: DNS names changed: +edge-1.intra.terror.ninja"
    ]
    assert {n for n, c in changes.items() if c["status"] == "changed"} == {"bi-node-sbg-1"}


def test_a_template_change_is_every_node_of_that_os(built: Path, tmp_path_factory: Any) -> None:
    """A copy of the tool with one OpenBSD packaging template changed: every OpenBSD
    package changes, for a reason outside the node's files."""
    tool = tmp_path_factory.mktemp("tool")
    for part in ("builder", "recipes", "packaging", "images"):
        shutil.copytree(REPO / part, tool / part, ignore=shutil.ignore_patterns("__pycache__"))
    desc = tool / "packaging/openbsd/+DESC.j2"
    desc.write_text(desc.read_text() + "Maintained by the operations team.\n")
    doc = run_json(built, "build", env={"PYTHONPATH": str(tool)})
    changes = packages(doc)
    assert set(changes) == set(SERVERS + CLIENTS)
    for change in changes.values():
        assert change["status"] == "changed"
        assert change["reasons"] == ["template or tool changed"]


def test_text_report_lines_and_summary(built: Path) -> None:
    edit(built, '"edge"', '"edge-2"')
    proc = nomad_build(built, "build")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert (
        "changed   dist/openbsd/nomad-config-bi-node-sbg_1-2.tgz 1 -> 2 "
        "(config changed: /etc/nomad/nomad.hcl)"
    ) in lines
    assert "unchanged dist/openbsd/nomad-config-bi-core-sbg_1-1.tgz" in lines
    summary = next(ln for ln in lines if re.match(r"^\d+ artifacts: ", ln))
    assert re.fullmatch(
        r"\d+ artifacts: 0 new, \d+ changed, \d+ unchanged \(\d+ reused, not rebuilt\); "
        r"1 package versions were bumped in [0-9.]+ s",
        summary,
    ), summary
    # next steps: what to serve, how a node installs, where the secrets are
    steps = lines[lines.index("next steps:") :]
    assert any("serve dist/repo/openbsd/" in s for s in steps)
    assert any("pkg_add nomad-config-<stem>" in s for s in steps)
    assert any("files holding node keys" in s and "dist/openbsd/" in s for s in steps)
    quiet = nomad_build(built, "build", "-q")
    assert quiet.returncode == 0 and quiet.stdout == ""


# ---------------------------------------------------------------- warnings


WARNINGS = {
    # trigger (cluster-file edit on the Debian example) -> the key the warning names
    "no-login": (
        lambda t: re.sub(r"^(ssh_keys|password_hash) = .*\n", "", t, flags=re.M),
        "images.ssh_keys",
    ),
    "no-nomad-source": (lambda t: t, "packages.nomad_apt"),
    "no-repo-url": (lambda t: t, "packages.repo_url"),
    "no-autoinstall": (lambda t: t, "images.password_hash"),
}


def _debian(directory: Path, *, fixed: bool) -> Path:
    """The Debian example; `fixed`: with every key whose absence is warned about."""
    from builder import openpgp

    path = write_cluster(directory, "debian")
    if not fixed:
        return path
    # HashiCorp's key stands in as an armored OpenPGP public key of our own making
    secret = openpgp.generate_key("stand-in <test@example.org>", created=1_700_000_000)
    armored = openpgp.armor("PGP PUBLIC KEY BLOCK", openpgp.public_keyring(secret))
    (directory / "hashicorp.asc").write_bytes(armored)
    text = path.read_text().replace(
        "[packages]\n", '[packages]\nrepo_url = "https://pkg.example.org/debian"\n', 1
    )
    text = text.replace("[images]\n", '[images]\npassword_hash = "$6$s$' + "x" * 86 + '"\n', 1)
    text += (
        '\n[packages.nomad_apt]\nurl = "https://apt.releases.hashicorp.com"\n'
        'keyring = "hashicorp.asc"\n'
    )
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(WARNINGS))
def test_each_warning_comes_from_its_trigger(tmp_path: Path, case: str) -> None:
    mutate, key = WARNINGS[case]
    path = _debian(tmp_path, fixed=True)
    clean = nomad_build(tmp_path, "check")
    assert clean.returncode == 0, clean.stderr
    assert clean.stderr == ""  # every trigger fixed: no warning at all
    if case == "no-login":
        path.write_text(mutate(path.read_text()))
    else:
        _debian(tmp_path / "raw", fixed=False)
        shutil.copy(tmp_path / "raw" / CLUSTER, path)
    proc = nomad_build(tmp_path, "check")
    assert proc.returncode == 0
    assert f"warning: cluster.toml: {key}: " in proc.stderr, proc.stderr
    strict = nomad_build(tmp_path, "build", "--strict")
    assert strict.returncode == 2
    assert strict.stderr.startswith("nomad-build: ") and "--strict" in strict.stderr
    assert not (tmp_path / "dist").exists() and not (tmp_path / "state").exists()


def test_no_placeholder_repository_source(tmp_path: Path) -> None:
    _debian(tmp_path, fixed=False)
    assert nomad_build(tmp_path, "build").returncode == 0
    assert not list((tmp_path / "dist").rglob("*.sources"))
    assert b"REPLACE" not in b"".join(
        p.read_bytes() for p in (tmp_path / "dist").rglob("*") if p.is_file()
    )


# ---------------------------------------------------------------- manifest and sums


def test_manifest_and_signed_checksums(built: Path) -> None:
    dist = built / "dist"
    manifest = json.loads((dist / "manifest.json").read_text())
    files = {p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file()}
    listed = {a["path"] for a in manifest["artifacts"]}
    assert listed == files - {"manifest.json", "SHA256SUMS", "SHA256SUMS.sig", ".nomad-build.json"}
    for a in manifest["artifacts"]:
        data = (dist / a["path"]).read_bytes()
        assert a["sha256"] == hashlib.sha256(data).hexdigest() and a["size"] == len(data)
        assert a["secret"] == (os.stat(dist / a["path"]).st_mode & 0o777 == 0o600)
    pkgs = [a for a in manifest["artifacts"] if a["kind"] == "package"]
    assert {(a["node"], a["format"], a["version"]) for a in pkgs} == {
        (n, "openbsd", 1) for n in SERVERS + CLIENTS
    }
    certs = {c["node"]: c for c in manifest["certificates"]}
    assert certs["bi-core-sbg-1"]["common_name"] == "server.eu.nomad"
    assert certs["bi-node-sbg-1"]["dns_names"][0] == "client.eu.nomad"
    pub = built / "state" / "bi-sbg-pkg.pub"
    for where, sig in ((dist, "SHA256SUMS.sig"), (dist / "repo/openbsd", "SHA256.sig")):
        ok = subprocess.run(
            ["signify-openbsd", "-C", "-p", str(pub), "-x", sig], cwd=where, capture_output=True
        )
        assert ok.returncode == 0, ok.stderr
        listed_file = next(p for p in where.rglob("*.tgz"))
        os.chmod(listed_file, 0o600)
        listed_file.write_bytes(listed_file.read_bytes() + b"\0")  # one changed byte
        bad = subprocess.run(
            ["signify-openbsd", "-C", "-p", str(pub), "-x", sig], cwd=where, capture_output=True
        )
        assert bad.returncode != 0


# ---------------------------------------------------------------- CLI conventions


def test_a_held_lock_is_exit_1_and_wait_waits(built: Path) -> None:
    lock = built / "state" / ".lock"
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proc = nomad_build(built, "build")
        assert proc.returncode == 1
        assert "holds the lock" in proc.stderr and "--wait" in proc.stderr
        waiting = subprocess.Popen(
            nomad_build_argv("build", "--wait", "30", "-q"), cwd=built, env=nomad_env()
        )
    finally:
        os.close(fd)  # the other run goes ahead once the lock is free
    assert waiting.wait(timeout=60) == 0


def test_version_command(tmp_path: Path) -> None:
    import builder

    proc = nomad_build(tmp_path, "version")
    assert proc.returncode == 0 and proc.stdout == f"nomad-build v{builder.__version__}\n"


def _commands() -> list[list[str]]:
    """Every command and group of the CLI, walked from its root."""
    import click

    from builder.cli import cli

    found: list[list[str]] = []

    def walk(group: click.Group, prefix: list[str]) -> None:
        for name, command in sorted(group.commands.items()):
            found.append([*prefix, name])
            if isinstance(command, click.Group):
                walk(command, [*prefix, name])

    walk(cli, [])
    return found


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_help_shows_an_example(tmp_path: Path, command: list[str]) -> None:
    proc = nomad_build(tmp_path, *command, "--help")
    assert proc.returncode == 0
    assert re.search(r"Example:\n +nomad-build ", proc.stdout), proc.stdout


def test_node_names_complete_from_the_cluster_file(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    env = {
        "_NOMAD_BUILD_COMPLETE": "bash_complete",
        "COMP_WORDS": "nomad-build package -c cluster.toml --node bi-core",
        "COMP_CWORD": "5",
    }
    proc = subprocess.run(
        nomad_build_argv(), cwd=tmp_path, env=nomad_env(env), capture_output=True, text=True
    )
    names = [ln.split(",", 1)[1] for ln in proc.stdout.splitlines()]
    assert names == list(SERVERS), proc.stdout + proc.stderr
