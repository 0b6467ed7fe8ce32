"""The one place that finds the data directories (recipes/, packaging/, images/).

In a source checkout they sit at the top of the repository; in an installed
wheel (or a one-file binary) they are shipped as builder/_data/<name>.
"""

from functools import cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


@cache
def data_root() -> Path:
    shipped = _PACKAGE_DIR / "_data"
    if (shipped / "recipes").is_dir():
        return shipped
    return _PACKAGE_DIR.parent


def data_path(*parts: str) -> Path:
    """Path of a data file, e.g. data_path("packaging", "debian", "postinst.j2")."""
    return data_root().joinpath(*parts)
