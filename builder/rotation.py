"""Resumable rotations of the cluster's long-lived secrets: the CA, the gossip key and the
package signing keys (apt repository, OpenBSD packages; see further down).

Each rotation is a procedure over several runs; the store records where it stands in
`rotation.json` ({"ca": {...} | absent, "gossip": {...} | absent, "apt_key", "openbsd_key",
"signify_key": the OpenBSD key's current name once rotated}), `pki status` shows
it, and each step says what to roll out next and refuses to skip ahead.

CA (`pki rotate-ca`, run three times):
  1. a new CA is made (ca/next.*); every package ships a bundle trusting old + new,
     node certificates stay on the old CA.        Roll out every node.
  2. the new CA becomes current (ca/ca.*, the old one ca/previous.*) and every node
     certificate is re-issued by it; the bundle still trusts both.  Roll out every node.
  3. the old CA leaves the bundle and is archived in ca/archive/<serial>.{key,pem}.
     Roll out every node.
  A step is refused until every node's package has been rebuilt since the previous
  step (versions.json shows a new package digest), so no node is left behind.
  `pki rotate-ca --consul` ([consul.agent] on) rotates the Consul CA the same way
  (builder.authority.CONSUL): consul-ca/next.*, consul-ca/previous.*,
  consul-ca/archive/, record "consul_ca", waiting on the Consul packages.

Gossip (`pki rotate-gossip`, then `pki rotate-gossip --finish`):
  Nomad ignores a changed `encrypt` once <data_dir>/server/serf.keyring exists, so the
  running servers change keys with `nomad operator gossip keyring install/use/remove`
  (printed by the first step, with the new key from gossip-next.key). `--finish` makes
  the new key current (gossip.key; the old one kept in gossip-history/<n>.key), so the
  `encrypt` of server packages built from then on, used only by a freshly bootstrapped
  server, carries the key the cluster now uses.
  `--consul` does the same for the Consul agents' LAN pool ([consul.agent] on; every
  agent, clients too, holds that key): `consul keyring -install/-use/-remove`, files
  consul-gossip.key, consul-gossip/next.key, consul-gossip/history/<n>.key, record
  "consul_gossip"; after --finish every node's Consul package carries the new key.

Lost for good (no backup), `--lost` (the way out builder.state.way_out names): nothing
of the lost secret is needed. `pki rotate-ca --lost` makes a new CA current at once (the
next generation if a rotation is in stage 1) and re-issues every node certificate; the
lost CA's certificate, if intact, stays in the bundle as ca/previous.pem until the next
`pki rotate-ca` (record stage 2). `pki rotate-gossip --lost` makes a new key (or the one
a rotation already installs) current at once. The signing keys' `--lost` is further down.
Each is kept in rotation.json's history with "lost": true; a changed file's bytes are
kept in a `damaged/` directory of the store, never deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from builder import consul, pki
from builder.authority import CONSUL, NOMAD, Authority, authorities
from builder.errors import UserError
from builder.model import Cluster
from builder.state import Event, State

RECORD = "rotation.json"


def _record(st: State) -> dict[str, Any]:
    raw = st.read_file(RECORD)
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise UserError(f"{st.directory / RECORD}: damaged; restore it from your backup")
    return data


def record_lost(st: State, kind: str, what: list[str] | None = None) -> None:
    """Keep in rotation.json's history that a lost or changed secret of `kind` was
    replaced deliberately (and of which nodes, `what`)."""
    data = _record(st)
    entry: dict[str, Any] = {"kind": kind, "finished": _stamp(st), "lost": True}
    if what:
        entry["nodes"] = what
    data.setdefault("history", []).append(entry)
    _save(st, data)


def _save(st: State, data: dict[str, Any]) -> None:
    blob = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    st.write_files({RECORD: (blob, True)})


def status(st: State) -> dict[str, Any]:
    """{"ca": {"stage": n, "of": 3, "next": "..."} | None, "consul_ca", "gossip",
    "consul_gossip", "apt_key", "openbsd_key": the same (the signing keys' also name the
    new "key")}."""
    data = _record(st)
    out: dict[str, Any] = {"ca": _ca_status(data, NOMAD), "consul_ca": _ca_status(data, CONSUL)}
    out["gossip"] = None
    out["apt_key"] = signing_status(data, "apt_key")
    out["openbsd_key"] = signing_status(data, "openbsd_key")
    for pool in (NOMAD_GOSSIP, CONSUL_GOSSIP):
        rec = data.get(pool.record)
        out[pool.record] = None
        if rec is not None:
            out[pool.record] = {
                "stage": 1,
                "of": 2,
                "since": rec["since"],
                "next": f"run the keyring install/use/remove sequence on {pool.run_on}, "
                f"then `nomad-build {pool.command} --finish`",
            }
    return out


def _ca_next(auth: Authority, stage: int) -> str:
    nodes = "every node" if auth is NOMAD else "every node's Consul package"
    what = ["they now trust both CAs", "certificates from the new CA"][stage - 1]
    return f"build and roll out {nodes} ({what}), then run {auth.rotate} again"


def _ca_status(data: dict[str, Any], auth: Authority) -> dict[str, Any] | None:
    rec = data.get(auth.record)
    if rec is None:
        return None
    stage = rec["stage"]
    return {"stage": stage, "of": 3, "since": rec["since"], "next": _ca_next(auth, stage)}


def _package_digests(cluster: Cluster, st: State, auth: Authority = NOMAD) -> dict[str, str | None]:
    """Each node's package digest, of the package carrying `auth`'s files."""
    out: dict[str, str | None] = {}
    for node in cluster.nodes:
        cur = st.current_version(node.name, auth.formats[node.os])
        out[node.name] = cur[1] if cur is not None else None
    return out


def _require_rebuilt(cluster: Cluster, st: State, rec: dict[str, Any], auth: Authority) -> None:
    _require_rolled_out(_package_digests(cluster, st, auth), rec, _command(auth))


def _require_rolled_out(now: dict[str, str | None], rec: dict[str, Any], command: str) -> None:
    """Refuse the next stage while a node's package digest is still the one recorded when
    stage `rec` began (or it has none): its new package was not built yet."""
    behind = [n for n, d in now.items() if d is None or d == rec["packages"].get(n)]
    if behind:
        raise UserError(
            f"{command}: stage {rec['stage']} is not rolled out: no new package was built "
            f"for {', '.join(behind)} since it began; run `nomad-build build`, install the "
            "packages on every node, then run this again"
        )


def _command(auth: Authority) -> str:
    """'pki rotate-ca', 'pki rotate-ca --consul': as messages and records name it."""
    return auth.rotate.strip("`").removeprefix("nomad-build ")


def _stamp(st: State) -> str:
    return st.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rotate_ca(cluster: Cluster, st: State, auth: Authority = NOMAD) -> list[str]:
    """Advance the rotation of `auth`'s CA (the cluster CA, or with [consul.agent] on the
    Consul CA) by one stage; returns the lines saying what comes next."""
    if auth not in authorities(cluster):
        raise UserError(
            f"{cluster.source}: {_command(auth)}: consul.agent.enabled is not true, "
            "so there is no Consul CA"
        )
    data = _record(st)
    rec = data.get(auth.record)
    ca = st.ca(auth.ca_spec(cluster), auth.ca_files)
    assert ca is not None
    if rec is None:
        stage = _ca_begin(cluster, st, data, auth)
    elif rec["stage"] == 1:
        _require_rebuilt(cluster, st, rec, auth)
        _ca_switch(cluster, st, auth, ca)
        stage = 2
    else:
        _require_rebuilt(cluster, st, rec, auth)
        _ca_archive(st, auth)
        del data[auth.record]
        data.setdefault("history", []).append({"kind": auth.record, "finished": _stamp(st)})
        _save(st, data)
        st.events.append(Event("archived", f"old {auth.title}", f"{_command(auth)} stage 3"))
        return [
            f"{auth.title} rotation done: the old {auth.title} is archived in the state and "
            "no longer trusted; build and roll out every node"
        ]
    data[auth.record] = {
        "stage": stage,
        "since": _stamp(st),
        "packages": _package_digests(cluster, st, auth),
    }
    _save(st, data)
    return [f"{auth.title} rotation stage {stage} of 3: {_ca_next(auth, stage)}"]


def replace_lost_ca(cluster: Cluster, st: State, auth: Authority = NOMAD) -> list[str]:
    """`pki rotate-ca --lost`: `auth`'s CA key or certificate is lost or changed (no
    backup). Nothing can sign for the lost CA, so a new CA becomes current at once and
    re-issues every node certificate: the next generation if a rotation is in stage 1
    (nodes rolled out since trust it already), else a fresh one. The lost CA's
    certificate, if intact, stays in the bundle (nodes upgraded keep trusting those not
    yet upgraded) until `pki rotate-ca` is run once more after the rollout.
    Refused while the CA is sound (rotate it in stages)."""
    if auth not in authorities(cluster):
        raise UserError(
            f"{cluster.source}: {_command(auth)} --lost: consul.agent.enabled is not true, "
            "so there is no Consul CA"
        )
    files = auth.ca_files
    bad = [rel for rel in (files.key, files.cert) if st.problem(rel) is not None]
    if not bad:
        raise _not_lost(st, files.key, _command(auth), auth.rotate)
    _require_sound_pairs(cluster, st, auth)  # refused before anything is written
    data = _record(st)
    old_cert = st.read_file(files.cert) if files.cert not in bad else None
    key, cert, lines = _lost_ca_successor(cluster, st, data, auth)
    _keep_damaged(st, bad, f"{files.staging}/damaged")
    made = {files.key: (key, True), files.cert: (cert, True)}
    if old_cert is not None:
        made[f"{files.staging}/previous.pem"] = (old_cert, True)
    st.write_files(made)
    st.remove_files([f"{files.staging}/next.key", f"{files.staging}/next.pem"])
    st.events.append(Event("created", auth.title, "the old one was lost or changed"))
    _reissue_all(cluster, st, auth, (key, cert), f"{_command(auth)} --lost: signed by the new CA")
    data.setdefault("history", []).append(
        {"kind": auth.record, "finished": _stamp(st), "lost": True}
    )
    nodes = "every node" if auth is NOMAD else "every node's Consul package"
    lines.append(
        f"every node certificate is now signed by it: build and roll out {nodes} now; "
        "until then a node not yet upgraded may refuse the upgraded ones"
    )
    data.pop(auth.record, None)
    if old_cert is not None:
        data[auth.record] = {
            "stage": 2,
            "since": _stamp(st),
            "packages": _package_digests(cluster, st, auth),
            "lost": True,
        }
        lines.append(
            f"the lost {auth.title}'s certificate stays trusted beside the new one until "
            f"{nodes} is rolled out: then run {auth.rotate} once more to drop it"
        )
    _save(st, data)
    return lines


def _require_sound_pairs(cluster: Cluster, st: State, auth: Authority) -> None:
    for node in cluster.nodes:
        where = auth.cert_files(st, node.name)
        for rel in (where.key, where.cert):
            problem = st.problem(rel)
            if problem is not None:
                raise UserError(problem)


def _lost_ca_successor(
    cluster: Cluster, st: State, data: dict[str, Any], auth: Authority
) -> tuple[bytes, bytes, list[str]]:
    """The CA that replaces a lost one, and what to say about it. A rotation under way
    ends here: in stage 1 its next generation is promoted; in stage 2 (the lost CA was
    the new one) the generation before it is archived as stage 3 would."""
    rec = data.get(auth.record)
    staging = auth.ca_files.staging
    if rec is not None and rec["stage"] == 1:
        key = st.read_file(f"{staging}/next.key")
        cert = st.read_file(f"{staging}/next.pem")
        if key is not None and cert is not None:
            return (
                key,
                cert,
                [
                    f"the {auth.title} of the rotation under way (stage 1) replaces the lost one; "
                    "nodes that run a stage-1 package trust it already"
                ],
            )
    if rec is not None and rec["stage"] == 2:
        _ca_archive(st, auth)
    spec = auth.ca_spec(cluster)
    key, cert = pki.create_ca(
        common_name=f"{spec.common_name} G{_generation(data, auth.record)}",
        permitted_dns=spec.permitted_dns,
        days=spec.days,
        now=st.clock(),
    )
    return key, cert, [f"a new {auth.title} replaces the lost one"]


def _reissue_all(
    cluster: Cluster, st: State, auth: Authority, ca: tuple[bytes, bytes], reason: str
) -> None:
    """Every node certificate `auth`'s CA signed, signed again by `ca` (same keys)."""
    for node in cluster.nodes:
        where = auth.cert_files(st, node.name)
        if st.cert_info(node.name, where) is not None:
            st.reissue_node_cert(
                node.name,
                auth.cert_spec(cluster, node),
                ca,
                rekey=False,
                reason=reason,
                files=where,
            )


def _ca_begin(cluster: Cluster, st: State, data: dict[str, Any], auth: Authority) -> int:
    """Stage 1: the next generation, which every node is sent to trust beside the old."""
    spec = auth.ca_spec(cluster)
    generation = len([e for e in data.get("history", []) if e.get("kind") == auth.record]) + 2
    key, cert = pki.create_ca(
        common_name=f"{spec.common_name} G{generation}",
        permitted_dns=spec.permitted_dns,
        days=spec.days,
        now=st.clock(),
    )
    staging = auth.ca_files.staging
    st.write_files({f"{staging}/next.key": (key, True), f"{staging}/next.pem": (cert, True)})
    what = f"{auth.title} (next generation)"
    st.events.append(Event("created", what, f"{_command(auth)} stage 1"))
    return 1


def _ca_switch(cluster: Cluster, st: State, auth: Authority, ca: tuple[bytes, bytes]) -> None:
    """Stage 2: the next generation becomes current and signs every node certificate."""
    files = auth.ca_files
    nkey = st.read_file(f"{files.staging}/next.key")
    ncert = st.read_file(f"{files.staging}/next.pem")
    if nkey is None or ncert is None:
        raise UserError(
            f"{st.directory}/{files.staging}/next.key: missing; restore it from your backup"
        )
    st.write_files(
        {
            f"{files.staging}/previous.key": (ca[0], True),
            f"{files.staging}/previous.pem": (ca[1], True),
            files.key: (nkey, True),
            files.cert: (ncert, True),
        }
    )
    st.remove_files([f"{files.staging}/next.key", f"{files.staging}/next.pem"])
    reason = f"{_command(auth)} stage 2: signed by the new CA"
    _reissue_all(cluster, st, auth, (nkey, ncert), reason)


def _ca_archive(st: State, auth: Authority) -> None:
    """Stage 3: the old generation leaves the bundle, kept in <staging>/archive/."""
    staging = auth.ca_files.staging
    old = st.read_file(f"{staging}/previous.pem")
    old_key = st.read_file(f"{staging}/previous.key")  # None after `--lost`
    if old is not None:
        archive = f"{staging}/archive/{pki.inspect_cert(old).serial:x}"
        kept = {f"{archive}.pem": (old, True)}
        if old_key is not None:
            kept[f"{archive}.key"] = (old_key, True)
        st.write_files(kept)
    st.remove_files([f"{staging}/previous.key", f"{staging}/previous.pem"])


@dataclass(frozen=True)
class GossipPool:
    """A gossip pool whose key `pki rotate-gossip` rotates: Nomad's servers', or (with
    [consul.agent] on, `--consul`) every Consul agent's LAN pool."""

    record: str  # its entry in rotation.json
    current: str  # store files: the key in use, the next one, the old ones
    next: str
    history: str
    command: str  # as messages and --json name it
    tool: str  # the keyring command, before install/use/remove
    run_on: str
    finished: str
    list_keys: str  # the command that shows the keys the running pool holds


NOMAD_GOSSIP = GossipPool(
    record="gossip",
    current="gossip.key",
    next="gossip-next.key",
    history="gossip-history",
    command="pki rotate-gossip",
    tool="nomad operator gossip keyring {verb} {key}",
    run_on="one server",
    finished="gossip key rotated: build and roll out the servers (their `encrypt` now "
    "carries the new key, used only when a server is bootstrapped afresh)",
    list_keys="nomad operator gossip keyring list",
)
# Consul keeps its keyring in <data_dir>/serf/local.keyring and, like Nomad, ignores a
# changed `encrypt` once that exists: the running pool changes keys with `consul keyring`.
CONSUL_GOSSIP = GossipPool(
    record="consul_gossip",
    current=consul.GOSSIP_KEY,
    next="consul-gossip/next.key",  # in a directory: never a node's consul-<node>.key
    history="consul-gossip/history",
    command="pki rotate-gossip --consul",
    tool="consul keyring -{verb}={key}",
    run_on="one Consul server",
    finished="Consul gossip key rotated: build and roll out every node (every Consul "
    "agent's `encrypt` now carries the new key, used only by an agent started afresh)",
    list_keys="consul keyring -list",
)


def _require_pool(cluster: Cluster, pool: GossipPool) -> None:
    if pool is CONSUL_GOSSIP and not consul.enabled(cluster):
        raise UserError(
            f"{cluster.source}: {pool.command}: consul.agent.enabled is not true, so "
            "there is no Consul gossip key"
        )
    if pool is NOMAD_GOSSIP and not cluster.servers:
        raise UserError(f"{pool.command}: this cluster has no servers")


def _not_lost(st: State, rel: str, command: str, rotate: str) -> UserError:
    return UserError(
        f"{command} --lost: {st.directory / rel} is not lost nor changed; "
        f"replace it in stages with {rotate}"
    )


def _keep_damaged(st: State, rels: list[str], where: str) -> None:
    """A changed secret's bytes are not destroyed: kept (0600) in <where>/ for a look."""
    kept = {}
    for rel in rels:
        path = st.directory / rel
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise UserError(f"{path}: not a file; move it aside, then run this again")
        if path.is_file():
            kept[f"{where}/{_stamp(st)}-{rel.replace('/', '_')}"] = (path.read_bytes(), True)
    if kept:
        st.write_files(kept)


def replace_lost_gossip(
    cluster: Cluster, st: State, pool: GossipPool
) -> tuple[list[str], list[str]]:
    """`pki rotate-gossip --lost`: the current key is lost or changed (no backup). The
    running pool still holds it in its keyring, so a new key becomes current at once
    and the printed keyring sequence installs it there; the old key is removed by what
    the keyring lists. Refused while the key is sound (rotate it in two steps)."""
    _require_pool(cluster, pool)
    if st.problem(pool.current) is None:
        raise _not_lost(st, pool.current, pool.command, f"`nomad-build {pool.command}`")
    data = _record(st)
    rec = data.pop(pool.record, None)
    upcoming = st.read_file(pool.next) if rec is not None else None  # already installed?
    new = upcoming.decode().strip() if upcoming is not None else pki.generate_gossip_key()
    _keep_damaged(st, [pool.current], f"{pool.history}/damaged")
    st.write_files({pool.current: ((new + "\n").encode(), True)})
    if rec is not None:
        st.remove_files([pool.next])
    data.setdefault("history", []).append(
        {"kind": pool.record, "finished": _stamp(st), "lost": True}
    )
    _save(st, data)
    what = "gossip key" if pool is NOMAD_GOSSIP else "Consul gossip key"
    st.events.append(Event("created", what, "the old one was lost or changed"))
    commands = [pool.tool.format(verb="install", key=new), pool.tool.format(verb="use", key=new)]
    return commands, [
        f"run these on {pool.run_on}: the running pool still knows the lost key; then "
        f"`{pool.list_keys}` and remove every other key with "
        f"`{pool.tool.format(verb='remove', key='<old key>')}`",
        pool.finished,
    ]


def gossip_commands(pool: GossipPool, new: str, old: str) -> list[str]:
    return [
        pool.tool.format(verb="install", key=new),
        pool.tool.format(verb="use", key=new),
        pool.tool.format(verb="remove", key=old),
    ]


def _gossip_key(cluster: Cluster, st: State, pool: GossipPool) -> str:
    """The pool's current key (refused when the cluster has no such pool)."""
    if pool is CONSUL_GOSSIP:
        if not consul.enabled(cluster):
            raise UserError(
                f"{cluster.source}: {pool.command}: consul.agent.enabled is not true, so "
                "there is no Consul gossip key"
            )
        key = consul.gossip_key(st)
    else:
        if not cluster.servers:
            raise UserError(f"{pool.command}: this cluster has no servers")
        key = st.gossip_key()
    assert key is not None  # a writable store makes it
    return key


def rotate_gossip(
    cluster: Cluster, st: State, *, finish: bool, pool: GossipPool = NOMAD_GOSSIP
) -> tuple[list[str], list[str]]:
    """(commands to run on one server, what comes next). Start, or `finish`."""
    data = _record(st)
    old = _gossip_key(cluster, st, pool)
    rec = data.get(pool.record)
    if finish:
        if rec is None:
            raise UserError(f"{pool.command} --finish: no rotation under way; start one first")
        raw = st.read_file(pool.next)
        if raw is None:
            raise UserError(f"{st.directory}/{pool.next}: missing; restore it from your backup")
        n = len([e for e in data.get("history", []) if e.get("kind") == pool.record]) + 1
        st.write_files(
            {f"{pool.history}/{n}.key": ((old + "\n").encode(), True), pool.current: (raw, True)}
        )
        st.remove_files([pool.next])
        del data[pool.record]
        data.setdefault("history", []).append({"kind": pool.record, "finished": _stamp(st)})
        _save(st, data)
        what = "gossip key" if pool is NOMAD_GOSSIP else "Consul gossip key"
        st.events.append(Event("rotated", what, f"{pool.command} --finish"))
        return [], [pool.finished]
    if rec is None:
        new = pki.generate_gossip_key()
        st.write_files({pool.next: ((new + "\n").encode(), True)})
        data[pool.record] = {"since": _stamp(st)}
        _save(st, data)
        what = "gossip key (next)" if pool is NOMAD_GOSSIP else "Consul gossip key (next)"
        st.events.append(Event("created", what, pool.command))
    else:
        raw = st.read_file(pool.next)
        if raw is None:
            raise UserError(f"{st.directory}/{pool.next}: missing; restore it from your backup")
        new = raw.decode().strip()
    return gossip_commands(pool, new, old), [
        f"run these on {pool.run_on} (with a management token if ACLs are on); the keyring "
        f"change reaches every member through gossip; then `nomad-build {pool.command} "
        "--finish`"
    ]


# ---------------------------------------------------------------- package signing keys
#
# `pki rotate-signing-key --apt` (run three times); the record is rotation.json "apt_key":
#   1. a new key (apt-signing-next.key); the repository is still signed by the old key,
#      the keyring shipped (repo/debian/, the seeds, and every Debian package as the
#      conffile /etc/apt/keyrings/nomad-build-archive-keyring.gpg) holds both keys.
#   2. the new key becomes apt-signing.key (the old one apt-signing-previous.key): the
#      repository is signed by it; the keyring still holds both.
#   3. the old key leaves the keyring, archived in apt-signing-archive/<fingerprint>.key.
#   Only the step to stage 2 waits for a rollout (of the keyring): stage 2 changes no
#   package, and every node trusts the new key from stage 1 on.
# Debian packages keep shipping the keyring from stage 1 on (an obsolete conffile would
# stay on the node with the old key in it).
#
# `pki rotate-signing-key --openbsd` (run three times); the record is "openbsd_key":
#   pkg_add verifies a package with /etc/signify/<name>.pub, <name> taken from the
#   signature, so the new key gets a new name, <stem>-g<N>-pkg (the cluster's
#   signing_key_name is <stem>-pkg), and both files live side by side in /etc/signify.
#   1. a new pair <new>.sec/.pub; packages are still signed by the old key and every
#      OpenBSD package ships /etc/signify/<new>.pub (@sample: created if absent).
#   2. the new key signs packages, the package directory's SHA256.sig and SHA256SUMS.sig,
#      and the autoinstall site sets carry it; rotation.json "signify_key" names it.
#   3. the old pair is archived in signify-archive/<old>.{sec,pub}.
# OpenBSD packages keep shipping the current key's .pub once a rotation began.

APT_KEY = "apt-signing.key"
APT_NEXT = "apt-signing-next.key"
APT_PREVIOUS = "apt-signing-previous.key"
_SIGNING_OS = {"apt_key": "debian", "openbsd_key": "openbsd"}
_SIGNING_NEXT = {
    1: "build and roll out every {os} node (they now trust both keys), then run "
    "`nomad-build pki rotate-signing-key --{flag}` again",
    2: "build and roll out every {os} node (signed by the new key), then run "
    "`nomad-build pki rotate-signing-key --{flag}` again",
}
_FLAG = {"apt_key": "apt", "openbsd_key": "openbsd"}
_OS_TITLE = {"debian": "Debian", "openbsd": "OpenBSD"}


def _signing_next(kind: str, stage: int) -> str:
    if kind == "apt_key" and stage == 2:  # no package changes: only the repository's signature
        return (
            "build and publish the repository (now signed by the new key; every node trusts "
            "it since stage 1), then run `nomad-build pki rotate-signing-key --apt` again"
        )
    return _SIGNING_NEXT[stage].format(os=_OS_TITLE[_SIGNING_OS[kind]], flag=_FLAG[kind])


def signing_status(data: dict[str, Any], kind: str) -> dict[str, Any] | None:
    rec = data.get(kind)
    if rec is None:
        return None
    return {
        "stage": rec["stage"],
        "of": 3,
        "since": rec["since"],
        "next": _signing_next(kind, rec["stage"]),
        "key": rec["key"],
    }


def _os_digests(cluster: Cluster, st: State, os_name: str) -> dict[str, str | None]:
    return {n: d for n, d in _package_digests(cluster, st).items() if cluster.node(n).os == os_name}


def _require_os_rebuilt(cluster: Cluster, st: State, rec: dict[str, Any], kind: str) -> None:
    now = _os_digests(cluster, st, _SIGNING_OS[kind])
    _require_rolled_out(now, rec, f"pki rotate-signing-key --{_FLAG[kind]}")


def signify_key_name(cluster: Cluster, generation: int) -> str:
    base = cluster.packages.signing_key_name
    if generation <= 1:
        return base
    return f"{base.removesuffix('-pkg')}-g{generation}-pkg"


def current_signify_name(cluster: Cluster, st: State) -> str:
    """The name of the key that signs OpenBSD packages now (the cluster's signing_key_name
    until a rotation reached stage 2)."""
    name = _record(st).get("signify_key")
    return name if isinstance(name, str) else cluster.packages.signing_key_name


def _generation(data: dict[str, Any], kind: str) -> int:
    return len([e for e in data.get("history", []) if e.get("kind") == kind]) + 2


def _require_nodes(cluster: Cluster, kind: str) -> None:
    os_name = _SIGNING_OS[kind]
    if not any(n.os == os_name for n in cluster.nodes):
        raise UserError(
            f"pki rotate-signing-key --{_FLAG[kind]}: this cluster has no {_OS_TITLE[os_name]} "
            "nodes"
        )


def _begin(cluster: Cluster, st: State, data: dict[str, Any], kind: str, key: str) -> list[str]:
    os_name = _SIGNING_OS[kind]
    data[kind] = {
        "stage": 1,
        "since": _stamp(st),
        "key": key,
        "packages": _os_digests(cluster, st, os_name),
    }
    _save(st, data)
    return [f"{kind.replace('_', ' ')} rotation stage 1 of 3: {_signing_next(kind, 1)}"]


def _advance(cluster: Cluster, st: State, data: dict[str, Any], kind: str, stage: int) -> None:
    rec = data[kind]
    rec.update(
        stage=stage,
        since=_stamp(st),
        packages=_os_digests(cluster, st, _SIGNING_OS[kind]),
    )
    _save(st, data)


def _finish(st: State, data: dict[str, Any], kind: str) -> None:
    del data[kind]
    data.setdefault("history", []).append({"kind": kind, "finished": _stamp(st)})
    _save(st, data)


def rotate_apt_key(cluster: Cluster, st: State) -> list[str]:
    """Advance the apt repository key's rotation by one stage; returns what comes next."""
    from builder import openpgp

    _require_nodes(cluster, "apt_key")
    data = _record(st)
    rec = data.get("apt_key")
    current = st.read_file(APT_KEY)
    if current is None:
        raise UserError(
            f"{st.directory / APT_KEY}: no apt signing key yet; `nomad-build build` makes one"
        )
    if rec is None:
        user_id = openpgp.parse_secret_key(current).user_id  # apt refuses a changed Label
        made = openpgp.generate_key(user_id, created=int(st.clock().timestamp()))
        st.write_files({APT_NEXT: (made, True)})
        st.events.append(Event("created", "apt signing key (next)", "rotate-signing-key 1"))
        return _begin(cluster, st, data, "apt_key", openpgp.fingerprint(made))
    if rec["stage"] == 1:
        # Stage 2 changes no package (the keyring stays the same), only the repository's
        # signature: the rollout that matters, of the keyring, is checked here.
        _require_os_rebuilt(cluster, st, rec, "apt_key")
        new = st.read_file(APT_NEXT)
        if new is None:
            raise UserError(f"{st.directory / APT_NEXT}: missing; restore it from your backup")
        st.write_files({APT_PREVIOUS: (current, True), APT_KEY: (new, True)})
        st.remove_files([APT_NEXT])
        st.events.append(Event("rotated", "apt signing key", "rotate-signing-key stage 2"))
        _advance(cluster, st, data, "apt_key", 2)
        return [f"apt key rotation stage 2 of 3: {_signing_next('apt_key', 2)}"]
    old = st.read_file(APT_PREVIOUS)
    if old is not None:
        archive = f"apt-signing-archive/{openpgp.fingerprint(old)}.key"
        st.write_files({archive: (old, True)})
    st.remove_files([APT_PREVIOUS])
    st.events.append(Event("archived", "old apt signing key", "rotate-signing-key stage 3"))
    _finish(st, data, "apt_key")
    return [
        "apt key rotation done: the old key is archived in the state and leaves the keyring; "
        "build and roll out every Debian node"
    ]


def rotate_signify_key(cluster: Cluster, st: State) -> list[str]:
    """Advance the OpenBSD package key's rotation by one stage; returns what comes next."""
    from builder import signify

    _require_nodes(cluster, "openbsd_key")
    data = _record(st)
    rec = data.get("openbsd_key")
    old = current_signify_name(cluster, st)
    if st.read_file(f"{old}.sec") is None:
        raise UserError(
            f"{st.directory / old}.sec: no OpenBSD signing key yet; `nomad-build build` makes one"
        )
    if rec is None:
        new = signify_key_name(cluster, _generation(data, "openbsd_key"))
        sec, pub = signify.generate_keypair(comment_name=new)
        st.write_files({f"{new}.sec": (sec, True), f"{new}.pub": (pub, False)})
        st.events.append(Event("created", f"OpenBSD signing key {new}", "rotate-signing-key 1"))
        lines = _begin(cluster, st, data, "openbsd_key", new)
        data["openbsd_key"]["previous"] = old
        _save(st, data)
        return lines
    _require_os_rebuilt(cluster, st, rec, "openbsd_key")
    new = rec["key"]
    if rec["stage"] == 1:
        if st.read_file(f"{new}.sec") is None:
            raise UserError(f"{st.directory / new}.sec: missing; restore it from your backup")
        data["signify_key"] = new
        st.events.append(Event("rotated", f"OpenBSD signing key {new}", "stage 2"))
        _advance(cluster, st, data, "openbsd_key", 2)
        return [f"openbsd key rotation stage 2 of 3: {_signing_next('openbsd_key', 2)}"]
    previous = rec["previous"]
    files = {}
    for ext in ("sec", "pub"):
        raw = st.read_file(f"{previous}.{ext}")
        if raw is not None:
            files[f"signify-archive/{previous}.{ext}"] = (raw, ext == "sec")
    st.write_files(files)
    st.remove_files([f"{previous}.sec", f"{previous}.pub"])
    st.events.append(Event("archived", f"old OpenBSD signing key {previous}", "stage 3"))
    _finish(st, data, "openbsd_key")
    return [
        f"openbsd key rotation done: {previous} is archived in the state; packages are "
        f"signed by {new}; build and roll out every OpenBSD node"
    ]


def apt_keyring_keys(st: State) -> list[bytes] | None:
    """The secret keys whose public halves make the shipped apt keyring while a rotation
    is under way or after one (None: none ever began: the repository key alone, and
    Debian packages do not ship the keyring)."""
    data = _record(st)
    rec = data.get("apt_key")
    if rec is None and not any(e.get("kind") == "apt_key" for e in data.get("history", [])):
        return None
    current = st.read_file(APT_KEY)
    if current is None:
        return None
    extra = {1: APT_NEXT, 2: APT_PREVIOUS}.get(rec["stage"]) if rec is not None else None
    if extra is None:
        return [current]
    other = st.read_file(extra)
    if other is None:
        raise UserError(f"{st.directory / extra}: missing; restore it from your backup")
    return [current, other] if extra == APT_NEXT else [other, current]


def signify_shipped(cluster: Cluster, st: State) -> list[str]:
    """The signify keys every OpenBSD package ships in /etc/signify: the current one once
    it is not the cluster's first, and the next one while a rotation is under way."""
    data = _record(st)
    names = []
    current = data.get("signify_key")
    if isinstance(current, str):
        names.append(current)
    rec = data.get("openbsd_key")
    if rec is not None and rec["key"] not in names:
        names.append(rec["key"])
    return names


def _rotation_key(rec: dict[str, Any], kind: str) -> str:
    """The store file of the key a signing-key rotation holds beside the current one: the
    next key in stage 1, the previous one in stage 2."""
    if kind == "apt_key":
        return APT_NEXT if rec["stage"] == 1 else APT_PREVIOUS
    return f"{rec['key'] if rec['stage'] == 1 else rec['previous']}.sec"


def _lost_rotation_key(st: State, rec: dict[str, Any] | None, kind: str) -> str | None:
    """That key's file, if it is lost or changed (None: sound, or no rotation)."""
    if rec is None:
        return None
    rel = _rotation_key(rec, kind)
    return rel if st.problem(rel) is not None else None


def _end_rotation_without(st: State, data: dict[str, Any], kind: str, lost: str) -> list[str]:
    """The current key is sound but the rotation's other key (`lost`) is not: the
    rotation ends without it. In stage 1 it is abandoned (the current key keeps
    signing; a new rotation gets a name no node has seen); in stage 2 the previous key
    only waited to be archived. Its public half, if any, is archived."""
    rec = data.pop(kind)
    flag = _FLAG[kind]
    archive = "apt-signing-archive" if kind == "apt_key" else "signify-archive"
    _keep_damaged(st, [lost], f"{archive}/damaged")
    gone = [lost]
    if kind == "openbsd_key":
        name = lost.removesuffix(".sec")
        pub = st.read_file(f"{name}.pub")
        if pub is not None:
            st.write_files({f"{archive}/{name}.pub": (pub, False)})
        gone.append(f"{name}.pub")
    st.remove_files(gone)
    entry = {"kind": kind, "finished": _stamp(st), "lost": True, "stage": rec["stage"]}
    data.setdefault("history", []).append(entry)
    _save(st, data)
    what = "apt signing key" if kind == "apt_key" else "OpenBSD signing key"
    if rec["stage"] == 1:
        st.events.append(Event("abandoned", f"{what} rotation", f"{lost} was lost"))
        return [
            f"the rotation's new key ({lost}) was lost: the rotation is abandoned and the "
            "current key keeps signing; build and roll out every "
            f"{_OS_TITLE[_SIGNING_OS[kind]]} node, then start again with "
            f"`nomad-build pki rotate-signing-key --{flag}`"
        ]
    st.events.append(Event("archived", f"old {what}", f"{lost} was lost: stage 3"))
    return [
        f"the previous key ({lost}) was lost: the rotation is done without archiving it; "
        f"build and roll out every {_OS_TITLE[_SIGNING_OS[kind]]} node"
    ]


def replace_lost_key(cluster: Cluster, st: State, kind: str) -> list[str]:
    """`--lost`: the current key is gone or damaged for good (no backup). A new key becomes
    current at once; nodes cannot be sent it signed by a key they trust, so it is installed
    on each by hand. With the current key intact, a rotation's other key that is lost ends
    that rotation (_end_rotation_without); else refused (rotate it in stages)."""
    from builder import openpgp, signify

    _require_nodes(cluster, kind)
    data = _record(st)
    flag = _FLAG[kind]
    current = APT_KEY if kind == "apt_key" else f"{current_signify_name(cluster, st)}.sec"
    try:
        intact = st.read_file(current) is not None
    except UserError:
        intact = False
    if intact:
        other = _lost_rotation_key(st, data.get(kind), kind)
        if other is None:
            raise UserError(
                f"pki rotate-signing-key --{flag} --lost: {st.directory / current} is intact; "
                f"rotate it in stages with `nomad-build pki rotate-signing-key --{flag}`"
            )
        return _end_rotation_without(st, data, kind, other)
    rec = data.pop(kind, None)
    data.setdefault("history", []).append({"kind": kind, "finished": _stamp(st), "lost": True})
    archive = "apt-signing-archive" if kind == "apt_key" else "signify-archive"
    _keep_damaged(st, [current], f"{archive}/damaged")
    if kind == "apt_key":
        st.remove_files([APT_KEY, APT_NEXT, APT_PREVIOUS])
        made = openpgp.generate_key(f"nomad-build {cluster.name}")
        st.write_files({APT_KEY: (made, True)})
        _save(st, data)
        st.events.append(Event("created", "apt signing key", "the old one was lost"))
        return [
            f"a new apt key ({openpgp.fingerprint(made)}) replaces the lost one: build, then "
            "install dist/repo/debian/nomad-build-archive-keyring.gpg as "
            "/etc/apt/keyrings/nomad-build-archive-keyring.gpg on every Debian node by hand "
            "(they do not trust the new key yet)"
        ]
    old = current.removesuffix(".sec")
    gone = [f"{old}.sec", f"{old}.pub"]
    if rec is not None:
        gone += [f"{rec['key']}.sec", f"{rec['key']}.pub"]
    st.remove_files(gone)
    # a name no node has seen: not that of a rotation's key they may hold already
    new = signify_key_name(cluster, _generation(data, kind) - (0 if rec else 1))
    sec, pub = signify.generate_keypair(comment_name=new)
    st.write_files({f"{new}.sec": (sec, True), f"{new}.pub": (pub, False)})
    data["signify_key"] = new
    _save(st, data)
    st.events.append(Event("created", f"OpenBSD signing key {new}", "the old one was lost"))
    return [
        f"a new OpenBSD signing key {new} replaces the lost one: build, then install "
        f"dist/repo/openbsd/{new}.pub as /etc/signify/{new}.pub on every OpenBSD node by hand "
        "(they do not trust the new key yet)"
    ]
