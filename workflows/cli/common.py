"""What every command shares: exit codes, the error policy, `--debug`, the store argument.

One policy for the whole CLI (docs/cli.md): a problem in the inputs (config, store,
catalog, checkpoint, flags) prints one `error:` line naming the input and the fix and
exits 2; a check that finds problems (`validate`, an incomplete `status`) exits 1; a
build with failed tiles exits 3; anything unexpected prints one line naming the
exception and how to see it, exits 70, and shows the traceback only under `--debug`;
Ctrl-C prints what the command keeps and exits 130.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

EXIT_PROBLEMS = 1
"""A check found problems: `validate` on an invalid corpus, `status` of an incomplete one."""
EXIT_USER_ERROR = 2
"""A problem in the inputs (config, store, catalog, checkpoint, flags)."""
EXIT_BUILD_FAILURES = 3
"""A build ran, and some (tile, modality) failed: `failures.json` lists them."""
EXIT_INTERNAL = 70
"""An error terracube did not expect (EX_SOFTWARE): a bug to report, shown with --debug."""
EXIT_INTERRUPTED = 130

DEBUG_ENV = "TERRACUBE_DEBUG"
"""TERRACUBE_DEBUG=1 in the environment does what `--debug` does."""
_debug = [False]
"""`--debug` of the invocation under way (set by the app's callback on every call)."""


class UserError(Exception):
    """An input a person can fix; the message names it and the fix (exit 2)."""


def set_debug(on: bool) -> None:
    _debug[0] = on


def debugging() -> bool:
    return _debug[0] or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _fixable() -> tuple[type[BaseException], ...]:
    from terracube.catalog.stac.sources import SourceError
    from terracube.pipeline.corpus.schema import CorpusError
    from terracube.workflows.cluster import SchedulerUnreachable
    from terracube.workflows.config import ConfigError

    return (
        UserError,
        ConfigError,
        CorpusError,
        SourceError,
        SchedulerUnreachable,
        FileNotFoundError,
        FileExistsError,
    )


def _say(exc: BaseException) -> str:
    """The exception's own sentence (a KeyError's message without its quotes)."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def user_errors(
    *fixable: type[BaseException],
    interrupted: str = "interrupted: finished shards are saved; run the same command again "
    "to resume",
) -> Iterator[None]:
    """Apply the CLI's error policy to the block: user errors (the common ones plus
    `fixable`) as one line and exit 2, anything else as one line and exit 70, the
    traceback kept only under --debug; Ctrl-C prints `interrupted` and exits 130."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        typer.echo(interrupted, err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (*_fixable(), *fixable) as exc:
        if debugging():
            raise
        typer.echo(f"error: {_say(exc)}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except Exception as exc:
        if debugging():
            raise
        typer.echo(
            f"error: unexpected {type(exc).__name__}: {_say(exc)[:500]}\n"
            "(this is a terracube bug or an unforeseen input: run again with --debug for "
            "the traceback, and report it)",
            err=True,
        )
        raise typer.Exit(EXIT_INTERNAL) from None


def store_and_options(store: str) -> tuple[str, dict[str, Any]]:
    """A store URL/path, or a build config (.yaml) whose output store and storage options to use."""
    from terracube.workflows.config import load_config

    if store.endswith((".yaml", ".yml")) and Path(store).is_file():
        config = load_config(store)
        return config.store_url, dict(config.output.storage_options)
    return store, {}


StoreArg = Annotated[
    str,
    typer.Argument(
        help="Corpus store: a local path, an fsspec URL (s3://bucket/c.zarr), or the build "
        "config (.yaml) that wrote it (its storage_options are then used).",
        show_default=False,
        metavar="STORE",
    ),
]

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
