"""Config-level allowance (issue 23): the tests' loopback STAC API and asset server work
through `allowed_hosts`, and without it their items are set aside with the rule named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from terracube.pipeline.corpus.store import Corpus
from terracube.workflows.cli.app import app
from terracube.workflows.world import WorldManifest
from typer.testing import CliRunner

from tests.services.stac_api import StacApi
from tests.workflows.workflows_support import world_config

runner = CliRunner()


def _api_config(
    world: WorldManifest, folder: Path, api: StacApi, allowed: list[str] | None
) -> Path:
    config = world_config(world, folder, modalities=("worldcover",))
    document = yaml.safe_load(config.read_text())
    source: dict[str, object] = {
        "source": "stac_api",
        "url": api.url,
        "collection": "esa-worldcover",
    }
    if allowed is not None:
        source["allowed_hosts"] = allowed
    document["modalities"]["worldcover"] = source
    config.write_text(yaml.safe_dump(document))
    return config


def test_loopback_assets_are_read_only_through_their_allowance(
    world: WorldManifest, world_stac_api: StacApi, tmp_path: Path
) -> None:
    refused = _api_config(world, tmp_path / "refused", world_stac_api, None)
    planned = runner.invoke(app, ["plan", str(refused), "--dry-run"])
    assert planned.exit_code == 2, planned.output  # no data for worldcover anywhere
    assert "unsafe href" in planned.output and "loopback" in planned.output

    allowed = _api_config(world, tmp_path / "allowed", world_stac_api, ["127.0.0.1"])
    built = runner.invoke(app, ["build", str(allowed), "--synchronous", "--no-progress"])
    assert built.exit_code == 0 and "4 done" in built.output, built.output
    static = world_config(world, tmp_path / "static", modalities=("worldcover",))
    again = runner.invoke(app, ["build", str(static), "--synchronous", "--no-progress"])
    assert again.exit_code == 0, again.output
    over_http = Corpus.open(tmp_path / "allowed" / "corpus.zarr").array("worldcover")[:]
    from_files = Corpus.open(tmp_path / "static" / "corpus.zarr").array("worldcover")[:]
    np.testing.assert_array_equal(over_http, from_files)  # read through the egress check


def test_a_malformed_allowance_is_a_config_error(
    world: WorldManifest, world_stac_api: StacApi, tmp_path: Path
) -> None:
    config = _api_config(world, tmp_path, world_stac_api, ["10.0.0.0/99"])
    result = runner.invoke(app, ["plan", str(config), "--dry-run"])
    assert result.exit_code == 2 and "10.0.0.0/99" in result.output, result.output
    assert "Traceback" not in result.output
