"""The `terracube` command line."""

import typer

app = typer.Typer(no_args_is_help=True, help="terracube: EO corpora and pretraining.")


@app.command()
def version() -> None:
    """Print the installed terracube version."""
    from importlib.metadata import version as _v

    typer.echo(_v("terracube"))
