"""Names in OpenBSD's package world, shared by the package, repository and installer
writers: pkg_add's stem/version split, package file names, rc.d script names."""

from __future__ import annotations

import posixpath
import re

from builder.errors import BuildError

__all__ = ["KSH_IDENT", "is_package_path", "package_file_name", "split_package_name"]

KSH_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")  # rc.d script names are ksh names
PACKAGE_DIR = "openbsd"  # where packages go under dist/
_PACKAGE_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*-\d[A-Za-z0-9._+-]*\.tgz\Z")
_VERSION_SPLIT = re.compile(r"^(.*?)-(\d.*)\Z")  # OpenBSD::PackageName: first "-<digit>"


def split_package_name(name: str) -> tuple[str, str]:
    """(stem, version) as pkg_add splits a package name: at the FIRST '-<digit>'."""
    m = _VERSION_SPLIT.match(name)
    if not m:
        raise ValueError(f"{name}: no '-<digit>' version part")
    return m.group(1), m.group(2)


def is_package_path(path: str) -> bool:
    name = posixpath.basename(path)
    return path.startswith(PACKAGE_DIR + "/") and bool(_PACKAGE_FILE.match(name))


def package_file_name(path: str) -> str:
    """The file name of a package artifact's dist/ path; BuildError for anything else."""
    if not is_package_path(path):
        raise BuildError(f"not an OpenBSD package artifact: {path}")
    return posixpath.basename(path)
