"""The one place that finds the data directories (recipes/, packaging/, images/).

In a source checkout they sit at the top of the repository; in an installed
wheel they are shipped as builder/_data/<name>; in the one-file binary
(PyInstaller, `make binary`) they are unpacked with it under sys._MEIPASS as
builder/_data/<name>.
"""

import shlex
import sys
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

_PACKAGE_DIR = Path(__file__).resolve().parent


@cache
def data_root() -> Path:
    bundle = getattr(sys, "_MEIPASS", None)  # a PyInstaller one-file binary
    if bundle is not None:
        return Path(bundle) / "builder" / "_data"
    shipped = _PACKAGE_DIR / "_data"
    if (shipped / "recipes").is_dir():
        return shipped
    return _PACKAGE_DIR.parent


def data_path(*parts: str) -> Path:
    """Path of a data file, e.g. data_path("packaging", "debian", "postinst.j2")."""
    return data_root().joinpath(*parts)


def template_environment(
    filters: Mapping[str, Callable[..., Any]], *, trim: bool = False
) -> jinja2.Environment:
    """A Jinja2 environment over the data directories, as every renderer wants it:
    unknown variables are errors, nothing is HTML-escaped (HCL, shell, YAML, units:
    each template escapes values with its format's filter), `sh` quotes for shells."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_root())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        auto_reload=False,  # compiled once per run: no stat of the template on every use
        trim_blocks=trim,
        lstrip_blocks=trim,
    )
    env.filters["sh"] = lambda value: shlex.quote(str(value))
    env.filters.update(filters)
    return env
