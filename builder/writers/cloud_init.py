"""cloud-init NoCloud seed of one Debian node: images/<node>/seed.iso.

The seed is an ISO 9660 image (Joliet + Rock Ridge, volume label ``cidata``)
written in pure Python with pycdlib, holding:

- ``meta-data``: instance-id derived from everything the seed delivers (a
  changed package, key or address is a new instance, so cloud-init runs
  again), local-hostname;
- ``user-data`` (``#cloud-config``): hostname/FQDN, the admin user with its SSH
  keys (and crypt(3) password hash, when the cluster file gives one), and the
  node's ``.deb``: from the signed apt repository when ``packages.repo_url``
  is set (the deb822 source and binary keyring at apt_repo's paths, by
  write_files -- no gpg needed in the image to dearmor a key, as cloud-init's
  ``apt: sources`` would), else embedded (write_files, base64, 0600). With
  [consul.agent] on, the node's ``consul-config-<node>`` comes the same way and
  goes in by the same apt-get run (its Depends pulls HashiCorp's ``consul``). Either
  way a first-boot unit, ``nomad-build-install.service`` (images/firstboot/),
  installs it: runcmd enables and starts it without waiting; it retries with a
  growing pause (5 s doubling to 300 s) until apt-get has installed the
  package, logs each attempt to the journal and the console, keeps
  /var/lib/nomad-build/install-pending (what failed last) until then, and
  disables itself. cloud-init itself finishes ``done`` meanwhile. The
  package's maintainer scripts enable and start the agent. The cluster file's
  ``nameservers`` go to /etc/resolv.conf (runcmd, before the installer
  starts) unless that is a link (resolved, resolvconf: fed by network-config),
  and into dhclient.conf as ``supersede`` when dhclient is there;
- ``network-config`` (v2): the node's static address when the cluster file
  gives a prefix, else DHCP, written the way Debian 12's ifupdown renderer
  handles (the literal interface name as the key, or a MAC match plus
  set-name; a bare ``match: {name: …}`` is rendered under the key instead).
  Left out when the cluster file names neither an interface nor a MAC for a
  DHCP node: cloud-init's fallback (DHCP on the first NIC) is then right. A MAC
  without an interface name renames that NIC to eth0.

The .deb holds the node's private key, so the seed is secret (written 0600).
Byte-identical for the same inputs: pycdlib's clock is pinned to ``mtime``
(UTC) while the image is built.
"""

from __future__ import annotations

from builder.errors import BuildError
from builder.model import Node
from builder.nodetree import NodeTree
from builder.seed import (
    DebianSeedWriter,
    SeedPackage,
    content_id,
    network_plan,
    render,
    seed_iso,
    user_context,
)
from builder.writers import Artifact

__all__ = ["CloudInitWriter", "build_cloud_init_seed"]


def build_cloud_init_seed(
    node: Node,
    tree: NodeTree,
    *,
    deb: Artifact,
    repo_keyring: bytes | None,
    mtime: int,
    consul: SeedPackage | None = None,
) -> Artifact:
    """images/<node>/seed.iso: NoCloud seed that makes a Debian cloud image this node."""
    if tree.node != node.name or tree.os != "debian":
        raise BuildError(f"{node.name}: a cloud-init seed needs the node's Debian NodeTree")
    ctx = user_context(node, tree, deb, repo_keyring, consul)
    delivered = [deb.data, *([consul.artifact.data] if consul else [])]
    user_data = render("images/cloud-init/user-data.j2", **ctx)
    plan = network_plan(node)
    files: list[tuple[str, bytes]] = [("user-data", user_data)]
    if plan is not None:
        files.append(
            (
                "network-config",
                render(
                    "images/cloud-init/network-config.j2",
                    net=plan,
                    node_name=node.name,
                    routes=False,
                ),
            )
        )
    iid = "nomad-build-" + node.name + "-" + content_id(*(data for _, data in files), *delivered)
    files.append(
        ("meta-data", render("images/cloud-init/meta-data.j2", node=node, instance_id=iid))
    )
    iso = seed_iso(files, mtime=mtime)
    return Artifact(f"images/{node.name}/seed.iso", iso, secret=True, node=node.name)


class CloudInitWriter(DebianSeedWriter):
    """A Debian node's cloud-init NoCloud seed (the node's package inside or by source)."""

    name = "cloud-init"
    file_name = "seed.iso"

    def seed(
        self,
        node: Node,
        tree: NodeTree,
        deb: Artifact,
        keyring: bytes | None,
        mtime: int,
        consul: SeedPackage | None = None,
    ) -> Artifact:
        return build_cloud_init_seed(
            node, tree, deb=deb, repo_keyring=keyring, mtime=mtime, consul=consul
        )
