"""What every command of the CLI shares: the cluster, state and output options, and
the one error mapping (user error: one line, exit 2; build failure: exit 1)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from builder.errors import BuildError, UserError

CLUSTER_OPTION = click.option(
    "-c",
    "--cluster",
    "cluster_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("cluster.toml"),
    show_default=True,
    help="The cluster file.",
)
STATE_OPTION = click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Secrets store (CA, keys, versions). Default: state/ beside the cluster file.",
)
OUT_OPTION = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="Where artifacts go (never the state directory; see --force).",
)
FORCE_OPTION = click.option(
    "--force",
    is_flag=True,
    help="Write into an output directory nomad-build did not make (build replaces it whole).",
)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors: one line, exit 2. Build failures: one line, exit 1. Never a traceback."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            click.echo(f"nomad-build: {e}", err=True)
            sys.exit(2)
        except BuildError as e:
            click.echo(f"nomad-build: build failed: {e}", err=True)
            sys.exit(1)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"nomad-build: {where}{e.strerror or e}", err=True)
            sys.exit(1)

    return run
