"""What every command shares: the exit code for user errors, turning them into one line, the store argument."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

EXIT_USER_ERROR = 2
"""Exit status for a problem in the inputs (config, store, catalog); 1 = invalid corpus."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and a non-zero exit."""
    from terracube.catalog.stac.sources import SourceError
    from terracube.pipeline.corpus.schema import CorpusError
    from terracube.workflows.config import ConfigError

    try:
        yield
    except (ConfigError, CorpusError, SourceError, FileNotFoundError, FileExistsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: finished shards are saved; run the same command again to resume",
            err=True,
        )
        raise typer.Exit(130) from None


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
    ),
]
