"""Ubuntu Server autoinstall seed of one Debian-family node: images/<node>/autoinstall.iso.

The same NoCloud ISO as the cloud-init seed (label ``cidata``, builder.writers.
cloud_init.seed_iso), for the Ubuntu Server live installer (subiquity):

- ``user-data``: ``#cloud-config`` whose ``autoinstall:`` key (version 1) is the
  installer's answer file: identity (hostname, admin user, the crypt(3) hash
  from the cluster file -- never a plain password), SSH server with the admin
  keys, storage layout (LVM on the largest disk), timezone, network (netplan v2,
  the cloud-init seed's network plan) and late-commands that copy the node's
  ``.deb`` (with [consul.agent] on, its ``consul-config-<node>`` .deb too) (or the
  repository's source) and the first-boot installer
  (images/firstboot/: nomad-build-install.service, its script and the
  install-pending marker) into /target and enable the unit: the installed
  system's first boot installs the package, retrying until it is in;
- the rest of that user-data is the live session's own cloud-config:
  ``write_files`` puts the embedded ``.deb`` (0600; or the repository's keyring
  and deb822 source when ``packages.repo_url`` is set) under
  /var/lib/nomad-build/ of the installer, where the late-commands copy it from;
- ``meta-data``: instance-id from the content, local-hostname.

The package's postinst enables and starts the agent when the first-boot
installer has put it in. Secret: the
package holds the node's private key.
"""

from __future__ import annotations

from builder.errors import BuildError
from builder.model import Cluster, Node
from builder.nodetree import NodeTree
from builder.seed import (
    DEB_DIR,
    DebianSeedWriter,
    SeedPackage,
    content_id,
    network_plan,
    render,
    seed_iso,
    user_context,
)
from builder.writers import Artifact

__all__ = ["STORAGE_LAYOUT", "AutoinstallWriter", "build_autoinstall_seed"]

STORAGE_LAYOUT = "lvm"  # subiquity's layouts: "lvm" or "direct" (plain partitions)


def build_autoinstall_seed(
    node: Node,
    tree: NodeTree,
    *,
    deb: Artifact,
    repo_keyring: bytes | None,
    mtime: int,
    consul: SeedPackage | None = None,
) -> Artifact:
    """images/<node>/autoinstall.iso: answers the Ubuntu Server installer for this node."""
    if tree.node != node.name or tree.os != "debian":
        raise BuildError(f"{node.name}: an autoinstall seed needs the node's Debian NodeTree")
    if not node.images.password_hash:
        raise BuildError(f"{node.name}: an autoinstall seed needs images.password_hash")
    ctx = user_context(node, tree, deb, repo_keyring, consul)
    delivered = [deb.data, *([consul.artifact.data] if consul else [])]
    plan = network_plan(node)
    network = b""
    if plan is not None:
        network = render(
            "images/cloud-init/network-config.j2", net=plan, node_name=node.name, routes=True
        )
    user_data = render(
        "images/autoinstall/user-data.j2",
        **ctx,
        staging=DEB_DIR,
        layout=STORAGE_LAYOUT,
        network=network.decode(),
    )
    iid = "nomad-build-autoinstall-" + node.name + "-" + content_id(user_data, *delivered)
    meta = render("images/cloud-init/meta-data.j2", node=node, instance_id=iid)
    iso = seed_iso([("user-data", user_data), ("meta-data", meta)], mtime=mtime)
    return Artifact(f"images/{node.name}/autoinstall.iso", iso, secret=True, node=node.name)


class AutoinstallWriter(DebianSeedWriter):
    """A Debian-family node's Ubuntu Server autoinstall seed (needs images.password_hash)."""

    name = "autoinstall"
    file_name = "autoinstall.iso"

    def unfit(self, cluster: Cluster, node: Node) -> str | None:
        if node.images.password_hash or node.os != "debian":
            return super().unfit(cluster, node)
        return (
            "images.password_hash: missing (the Ubuntu installer's identity needs a "
            "crypt(3) hash, e.g. from `mkpasswd -m sha-512`)"
        )

    def seed(
        self,
        node: Node,
        tree: NodeTree,
        deb: Artifact,
        keyring: bytes | None,
        mtime: int,
        consul: SeedPackage | None = None,
    ) -> Artifact:
        return build_autoinstall_seed(
            node, tree, deb=deb, repo_keyring=keyring, mtime=mtime, consul=consul
        )
