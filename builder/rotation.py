"""Resumable rotations of the cluster's long-lived secrets: the CA and the gossip key.

Each rotation is a procedure over several runs; the store records where it stands in
`rotation.json` ({"ca": {...} | absent, "gossip": {...} | absent}), `pki status` shows
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

Gossip (`pki rotate-gossip`, then `pki rotate-gossip --finish`):
  Nomad ignores a changed `encrypt` once <data_dir>/server/serf.keyring exists, so the
  running servers change keys with `nomad operator gossip keyring install/use/remove`
  (printed by the first step, with the new key from gossip-next.key). `--finish` makes
  the new key current (gossip.key; the old one kept in gossip-history/<n>.key), so the
  `encrypt` of server packages built from then on, used only by a freshly bootstrapped
  server, carries the key the cluster now uses.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from builder import pki
from builder.errors import UserError
from builder.model import Cluster
from builder.render import ca_spec, cert_spec
from builder.state import Event, State

RECORD = "rotation.json"
_FORMATS = {"debian": "deb", "openbsd": "openbsd"}


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


def _save(st: State, data: dict[str, Any]) -> None:
    blob = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    st.write_files({RECORD: (blob, True)})


def status(st: State) -> dict[str, Any]:
    """{"ca": {"stage": n, "of": 3, "next": "..."} | None, "gossip": {...} | None}."""
    data = _record(st)
    out: dict[str, Any] = {"ca": None, "gossip": None}
    if "ca" in data:
        stage = data["ca"]["stage"]
        out["ca"] = {"stage": stage, "of": 3, "since": data["ca"]["since"], "next": _CA_NEXT[stage]}
    if "gossip" in data:
        out["gossip"] = {
            "stage": 1,
            "of": 2,
            "since": data["gossip"]["since"],
            "next": "run the keyring install/use/remove sequence on the servers, then "
            "`nomad-build pki rotate-gossip --finish`",
        }
    return out


_CA_NEXT = {
    1: "build and roll out every node (they now trust both CAs), then run "
    "`nomad-build pki rotate-ca` again",
    2: "build and roll out every node (certificates from the new CA), then run "
    "`nomad-build pki rotate-ca` again",
}


def _package_digests(cluster: Cluster, st: State) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for node in cluster.nodes:
        cur = st.current_version(node.name, _FORMATS[node.os])
        out[node.name] = cur[1] if cur is not None else None
    return out


def _require_rebuilt(cluster: Cluster, st: State, rec: dict[str, Any]) -> None:
    now = _package_digests(cluster, st)
    behind = [n for n, d in now.items() if d is None or d == rec["packages"].get(n)]
    if behind:
        raise UserError(
            f"pki rotate-ca: stage {rec['stage']} is not rolled out: no new package was built "
            f"for {', '.join(behind)} since it began; run `nomad-build build`, install the "
            "packages on every node, then run this again"
        )


def _stamp(st: State) -> str:
    return st.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rotate_ca(cluster: Cluster, st: State) -> list[str]:
    """Advance the CA rotation by one stage; returns the lines saying what comes next."""
    data = _record(st)
    rec = data.get("ca")
    spec = ca_spec(cluster)
    ca = st.ca(spec)
    assert ca is not None
    if rec is None:
        generation = len([e for e in data.get("history", []) if e.get("kind") == "ca"]) + 2
        key, cert = pki.create_ca(
            common_name=f"{spec.common_name} G{generation}",
            permitted_dns=spec.permitted_dns,
            days=spec.days,
            now=st.clock(),
        )
        st.write_files({"ca/next.key": (key, True), "ca/next.pem": (cert, True)})
        stage = 1
        st.events.append(Event("created", "CA (next generation)", "pki rotate-ca stage 1"))
    elif rec["stage"] == 1:
        _require_rebuilt(cluster, st, rec)
        nkey, ncert = st.read_file("ca/next.key"), st.read_file("ca/next.pem")
        if nkey is None or ncert is None:
            raise UserError(f"{st.directory}/ca/next.key: missing; restore it from your backup")
        st.write_files(
            {
                "ca/previous.key": (ca[0], True),
                "ca/previous.pem": (ca[1], True),
                "ca/ca.key": (nkey, True),
                "ca/ca.pem": (ncert, True),
            }
        )
        st.remove_files(["ca/next.key", "ca/next.pem"])
        new_ca = (nkey, ncert)
        for node in cluster.nodes:
            if st.cert_info(node.name) is not None:
                st.reissue_node_cert(
                    node.name,
                    cert_spec(cluster, node),
                    new_ca,
                    rekey=False,
                    reason="pki rotate-ca stage 2: signed by the new CA",
                )
        stage = 2
    else:
        _require_rebuilt(cluster, st, rec)
        old = st.read_file("ca/previous.pem")
        old_key = st.read_file("ca/previous.key")
        if old is not None and old_key is not None:
            serial = f"{pki.inspect_cert(old).serial:x}"
            archive = f"ca/archive/{serial}"
            st.write_files({f"{archive}.pem": (old, True), f"{archive}.key": (old_key, True)})
        st.remove_files(["ca/previous.key", "ca/previous.pem"])
        del data["ca"]
        data.setdefault("history", []).append({"kind": "ca", "finished": _stamp(st)})
        _save(st, data)
        st.events.append(Event("archived", "old CA", "pki rotate-ca stage 3"))
        return [
            "CA rotation done: the old CA is archived in the state and no longer trusted; "
            "build and roll out every node"
        ]
    data["ca"] = {"stage": stage, "since": _stamp(st), "packages": _package_digests(cluster, st)}
    _save(st, data)
    return [f"CA rotation stage {stage} of 3: {_CA_NEXT[stage]}"]


def gossip_commands(new: str, old: str) -> list[str]:
    return [
        f"nomad operator gossip keyring install {new}",
        f"nomad operator gossip keyring use {new}",
        f"nomad operator gossip keyring remove {old}",
    ]


def rotate_gossip(cluster: Cluster, st: State, *, finish: bool) -> tuple[list[str], list[str]]:
    """(commands to run on one server, what comes next). Start, or `finish`."""
    if not cluster.servers:
        raise UserError("pki rotate-gossip: this cluster has no servers")
    data = _record(st)
    old = st.gossip_key()
    assert old is not None
    rec = data.get("gossip")
    if finish:
        if rec is None:
            raise UserError("pki rotate-gossip --finish: no rotation under way; start one first")
        raw = st.read_file("gossip-next.key")
        if raw is None:
            raise UserError(f"{st.directory}/gossip-next.key: missing; restore it from your backup")
        n = len([e for e in data.get("history", []) if e.get("kind") == "gossip"]) + 1
        st.write_files(
            {f"gossip-history/{n}.key": ((old + "\n").encode(), True), "gossip.key": (raw, True)}
        )
        st.remove_files(["gossip-next.key"])
        del data["gossip"]
        data.setdefault("history", []).append({"kind": "gossip", "finished": _stamp(st)})
        _save(st, data)
        st.events.append(Event("rotated", "gossip key", "pki rotate-gossip --finish"))
        return [], [
            "gossip key rotated: build and roll out the servers (their `encrypt` now carries "
            "the new key, used only when a server is bootstrapped afresh)"
        ]
    if rec is None:
        new = pki.generate_gossip_key()
        st.write_files({"gossip-next.key": ((new + "\n").encode(), True)})
        data["gossip"] = {"since": _stamp(st)}
        _save(st, data)
        st.events.append(Event("created", "gossip key (next)", "pki rotate-gossip"))
    else:
        raw = st.read_file("gossip-next.key")
        if raw is None:
            raise UserError(f"{st.directory}/gossip-next.key: missing; restore it from your backup")
        new = raw.decode().strip()
    return gossip_commands(new, old), [
        "run these on one server (with a management token if ACLs are on); the keyring "
        "change reaches every server through gossip; then `nomad-build pki rotate-gossip "
        "--finish`"
    ]
