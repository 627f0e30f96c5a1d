"""`terracube model-info`: the v1 recipe's figures, measured, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

from terracube.model.nn.encoder import count_parameters
from terracube.model.nn.olmoearth import LatentMIM, LatentMIMConfig
from terracube.workflows.cli.app import app
from typer.testing import CliRunner

runner = CliRunner()


def test_model_info_json_shows_the_v1_recipe_and_measured_fractions() -> None:
    result = runner.invoke(app, ["model-info", "--size", "nano", "--json", "--samples", "64"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["decoder_depth"], info["drop_path"]) == (4, 0.1)
    assert info["encoder_block_params"] == 793_344  # the reference's nano encoder blocks
    assert info["decoder_params"] == 826_752 + 32 * 7  # Predictor core + channel embeddings
    assert info["target_params"] > 0 and info["target_trainable_params"] == 0
    assert info["recipe"]["target"] == "patch_embed_copy"
    assert info["masking"]["strategy"] == "modality_cross_random"
    # 0.35 x (1 - f) encoded, 0.35 + 0.15 f decoded, f = 128 / 3968 map tokens at 64 px
    # p=8 T=12 (a little less with 3 % invalid pixels), within five standard errors
    f = 128 / 3968
    for key, want in (("encoded", 0.35 * (1 - f)), ("decoded", 0.35 + 0.15 * f)):
        assert abs(info[f"{key}_fraction"] - want) < 5 * info[f"{key}_fraction_stderr"] + 0.01
    assert 0.25 < info["encoded_fraction"] < 0.4


def test_model_info_reads_a_config_and_refuses_bad_input(tmp_path: Path) -> None:
    config = tmp_path / "pretrain.yaml"
    config.write_text(
        "data: {store: corpus.zarr}\nmodel: {decoder_depth: 2, drop_path: 0.0}\n"
        "masking: {strategy: group_split}\n"
    )
    result = runner.invoke(app, ["model-info", "--config", str(config), "--samples", "32"])
    assert result.exit_code == 0, result.output
    assert "decoder depth 2" in result.output and "group_split" in result.output
    model = LatentMIM(LatentMIMConfig(decoder_depth=2))
    assert f"{count_parameters(model.decoder):>12,}" in result.output
    bad = runner.invoke(app, ["model-info", "--size", "huge"])
    assert bad.exit_code == 2 and "choose one of: nano, tiny, base, large" in bad.output
    config.write_text("data: {store: c}\nmodel: {patch_resize: nearest}\n")
    wrong = runner.invoke(app, ["model-info", "--config", str(config)])
    assert wrong.exit_code == 2 and "model.patch_resize" in wrong.output
