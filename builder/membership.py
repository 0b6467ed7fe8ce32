"""Server membership changes after bootstrap: what changes, the roll-out order, quorum.

The servers a cluster was last built with are the nodes whose stored certificate names
`server.<region>.nomad` and whose package was built (the store keeps every node it ever
issued for, also nodes since removed from the cluster file). Comparing them with the
cluster file's servers:

- added servers: their packages are new; every server's `bootstrap_expect` changes.
  Roll out the existing servers first (a changed bootstrap_expect does nothing to a
  cluster that already has a leader), then start the new ones one at a time, each
  joining through Consul before the next.
- removed servers: stop them one at a time and `nomad server force-leave` each (Nomad's
  autopilot also cleans up dead servers), then roll out the remaining servers.
- a plan is refused when the servers that stay are fewer than a quorum of the current
  set: the cluster would lose its leader. Remove fewer servers at a time. Adding is
  not limited (a 1-server cluster may grow to 3): the leader admits new servers one by
  one as they join, which is why they are started one at a time.
"""

from __future__ import annotations

import os

from builder.errors import UserError
from builder.model import Cluster
from builder.state import State


def quorum(n: int) -> int:
    return n // 2 + 1


def previous_servers(cluster: Cluster, st: State) -> set[str]:
    """Nodes whose stored certificate is a server's for this region and whose package
    was built (a node only rendered, or not built yet, was never deployed)."""
    try:
        names = sorted(e.name for e in os.scandir(st.directory / "nodes") if e.is_dir())
    except FileNotFoundError:
        return set()
    out = set()
    wanted = f"server.{cluster.region}.nomad"
    for name in names:
        if not any(st.current_version(name, fmt) for fmt in ("deb", "openbsd")):
            continue  # never built: never deployed
        if not os.path.exists(f"{st.directory}/nodes/{name}/cert.pem"):
            continue
        info = st.cert_info(name)
        if info is not None and wanted in info.dns_names:
            out.add(name)
    return out


def explain(cluster: Cluster, st: State) -> list[str]:
    """Lines describing a server membership change (none: no change or no bootstrap
    yet); UserError when the change would leave fewer than a quorum."""
    old = previous_servers(cluster, st)
    new = {n.name for n in cluster.servers}
    if not old or old == new:
        return []
    kept, added, removed = old & new, sorted(new - old), sorted(old - new)
    source = cluster.source
    if len(kept) < quorum(len(old)):
        raise UserError(
            f"{source}: servers change from {len(old)} to {len(new)} but only "
            f"{len(kept)} stay, fewer than a quorum ({quorum(len(old))}) of the current "
            f"{len(old)}: the cluster would lose its leader; remove at most "
            f"{max(len(old) - quorum(len(old)), 1)} server(s) at a time, rolling out "
            "each step"
        )
    lines = [
        f"servers change: {len(old)} -> {len(new)} (quorum {quorum(len(old))} -> "
        f"{quorum(len(new))}); bootstrap_expect becomes {cluster.bootstrap_expect}"
    ]
    step = 1
    lines.append(
        f"step {step}: roll out the servers that stay ({', '.join(sorted(kept))}) one at a "
        "time, each back in the cluster before the next"
    )
    for name in removed:
        step += 1
        lines.append(
            f"step {step}: stop {name}, then on a server `nomad server force-leave "
            f"{name}.{cluster.region}` (its data dir is no longer a member)"
        )
    for name in added:
        step += 1
        lines.append(
            f"step {step}: install {name}'s package (or boot its seed) and wait until "
            "`nomad server members` lists it alive"
        )
    step += 1
    lines.append(f"step {step}: roll out the clients (their server list comes from Consul)")
    return lines
