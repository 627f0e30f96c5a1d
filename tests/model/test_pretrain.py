"""Pretraining: exact resume, atomic weights_only checkpoints, schedule, config, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml
from terracube.model.nn.olmoearth import LatentMIM, LatentMIMConfig
from terracube.model.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from terracube.model.train.pretrain import parameter_fingerprint
from terracube.model.train.schedule import WarmupCosine
from terracube.workflows.pretrain_config import (
    PretrainConfigError,
    load_pretrain_config,
    run_pretrain,
)

from tests.loader.corpus_fixture import write_loader_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pretrain") / "corpus.zarr"
    write_loader_corpus(path)
    return path


def write_config(folder: Path, store: Path, **overrides: object) -> Path:
    """A nano-model config with tiny crops (8 px, patch 4) so a CPU step takes well under 1 s."""
    config = {
        "data": {
            "store": str(store),
            "batch_size": 2,
            "crop_sizes": [8],
            "patch_sizes": [4],
            "token_budget": 64,
            "workers": 0,
        },
        "model_size": "nano",
        "steps": 6,
        "optim": {"lr": 1e-3, "warmup_steps": 2, "accumulation": 1},
        "checkpoint": {"dir": "ckpt", "interval": 3},
        "out_dir": "out",
        "seed": 3,
        "device": "cpu",
    }
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_metrics(folder: Path) -> list[dict]:
    return [
        json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines()
    ]


def test_stopped_and_resumed_run_matches_an_uninterrupted_one(
    corpus_path: Path, tmp_path: Path
) -> None:
    straight = write_config(tmp_path / "straight", corpus_path)
    final = run_pretrain(straight)
    assert final == tmp_path / "straight" / "ckpt" / "step_00000006.pt"

    resumed = write_config(tmp_path / "resumed", corpus_path)
    first = run_pretrain(resumed, stop_after=3)
    assert first.name == "step_00000003.pt"
    # a crash after step 3 may have logged steps the checkpoint does not hold: they are dropped
    with (tmp_path / "resumed" / "out" / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 4, "loss": -1.0}) + "\n")
    run_pretrain(resumed)

    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "patch_discrimination", "contrastive", "lr", "grad_norm", "tokens"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    sa = json.loads((tmp_path / "straight" / "out" / "summary.json").read_text())
    sb = json.loads((tmp_path / "resumed" / "out" / "summary.json").read_text())
    assert sa["parameter_fingerprints"] == sb["parameter_fingerprints"]
    assert len({r["loss"] for r in a}) == 6  # the loss moves: something trains


def test_checkpoint_holds_every_part_and_metrics_and_curve_are_written(
    corpus_path: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, corpus_path, steps=2, **{"optim.warmup_steps": 1, "optim.accumulation": 2}
    )
    path = run_pretrain(config)
    state = load_checkpoint(path)  # weights_only=True
    assert set(state) >= {"model", "optimizer", "scheduler", "loader", "rng", "step", "settings"}
    assert state["step"] == 2
    assert state["loader"]["epoch"] == 0
    assert state["loader"]["consumed"] == 4  # 2 steps x 2 accumulated micro-batches
    assert state["scheduler"]["last_epoch"] == 2
    model = LatentMIM(LatentMIMConfig("nano"))
    model.load_state_dict(state["model"])
    rows = read_metrics(tmp_path)
    assert [r["samples"] for r in rows] == [4, 4]
    for key in ("loss", "lr", "tokens_per_s", "data_wait_s", "embedding_std", "effective_rank"):
        assert all(r[key] is not None for r in rows), key
    assert rows[0]["lr"] == pytest.approx(1e-3)  # end of warmup
    png = (tmp_path / "out" / "loss_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_schedule_warms_up_linearly_then_decays_to_the_floor() -> None:
    s = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == 1.0
    assert s(9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(14) == pytest.approx(0.1)
    assert all(s(i) >= s(i + 1) for i in range(4, 20))
    with pytest.raises(ValueError, match="warmup_steps=5"):
        WarmupCosine(5, 4)


def test_checkpoints_are_atomic_pruned_and_refuse_pickled_objects(tmp_path: Path) -> None:
    first = save_checkpoint(tmp_path, 1, {"w": torch.ones(2)})
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for a lambda
        save_checkpoint(tmp_path, 2, {"w": torch.zeros(2), "bad": lambda: None})
    assert list_checkpoints(tmp_path) == [first]  # no torn file, no temp file left behind
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    assert torch.equal(load_checkpoint(first)["w"], torch.ones(2))
    for step in (2, 3, 4):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.pt", "step_00000004.pt"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000004.pt"

    evil = tmp_path / "step_00000009.pt"
    torch.save({"x": Fraction(1, 3)}, evil)  # any pickled object, not a tensor or primitive
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(evil)


def test_config_errors_name_the_key_path_and_paths_resolve(tmp_path: Path) -> None:
    path = write_config(tmp_path, Path("corpus.zarr"))
    config = load_pretrain_config(path)
    assert config.data.store == str(tmp_path / "corpus.zarr")
    assert config.checkpoint.dir == tmp_path / "ckpt"
    raw = yaml.safe_load(path.read_text())
    raw["optim"]["lr_max"] = 1.0
    raw["data"]["batch_size"] = 0
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PretrainConfigError) as err:
        load_pretrain_config(path)
    assert "optim.lr_max: unknown key" in str(err.value)
    assert "data.batch_size" in str(err.value)
    raw["optim"].pop("lr_max")
    raw["data"]["batch_size"] = 2
    raw["optim"]["warmup_steps"] = 99
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PretrainConfigError, match="warmup_steps=99 exceeds steps=6"):
        load_pretrain_config(path)
    with pytest.raises(PretrainConfigError, match="does not exist"):
        load_pretrain_config(tmp_path / "nope.yaml")


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_train_and_stay_identical(
    corpus_path: Path, tmp_path: Path
) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    config = write_config(tmp_path, corpus_path, steps=2, **{"optim.warmup_steps": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",  # c10d rendezvous on a free loopback port
            "--nproc_per_node",
            "2",
            "-m",
            "terracube.workflows.pretrain_config",
            str(config),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 2
    fingerprints = summary["parameter_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    torch.manual_seed(3)  # the run's seed: the initial weights
    assert parameter_fingerprint(LatentMIM(LatentMIMConfig("nano"))) != fingerprints[0]
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert all("loss_mean_ranks" in r for r in rows)


def test_every_setting_is_defined_once_and_the_yaml_schema_reads_its_default() -> None:
    """The YAML sections expose every LoaderParams / OptimParams / PretrainSettings field
    (under its section's name) with the dataclass's own default, and nothing else."""
    import dataclasses

    from terracube.model.data.plan import LoaderParams
    from terracube.model.train.masking import MaskingParams
    from terracube.model.train.pretrain import PretrainSettings
    from terracube.model.train.schedule import OptimParams
    from terracube.workflows.pretrain_config import (
        RUN_SET_LOADER_FIELDS,
        CheckpointConfig,
        DataConfig,
        MaskingConfig,
        ModelConfig,
        OptimConfig,
        PretrainConfig,
    )

    def defaults(cls: type) -> dict[str, object]:
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }

    def schema(model: type) -> dict[str, object]:
        return {
            name: f.get_default(call_default_factory=True) for name, f in model.model_fields.items()
        }

    loader = {k: v for k, v in defaults(LoaderParams).items() if k not in RUN_SET_LOADER_FIELDS}
    run = defaults(PretrainSettings)
    data = schema(DataConfig)
    assert DataConfig.model_fields["store"].is_required()
    del data["store"]
    assert data == {
        **loader,
        "storage_options": {},
        "workers": run["workers"],
        "max_decode_error_share": run["max_decode_error_share"],
    }
    assert schema(OptimConfig) == defaults(OptimParams)
    checkpoint = schema(CheckpointConfig)
    assert (checkpoint["interval"], checkpoint["keep"]) == (
        run["checkpoint_interval"],
        run["keep_checkpoints"],
    )
    assert schema(MaskingConfig) == defaults(MaskingParams)
    model = defaults(LatentMIMConfig)
    assert schema(ModelConfig) == {k: v for k, v in model.items() if k != "size"}
    top = schema(PretrainConfig)
    assert top["model_size"] == run["model"].size  # type: ignore[attr-defined]
    for key in ("steps", "seed", "device", "compile"):
        assert top[key] == run[key], key
    settings = PretrainConfig.model_validate({"data": {"store": "s"}}).settings()
    assert settings.loader == LoaderParams() and settings.optim == OptimParams()
    assert settings.model == LatentMIMConfig()


def test_a_crop_the_loader_refuses_is_a_config_error(tmp_path: Path) -> None:
    from terracube.workflows.pretrain_config import PretrainConfig

    config = PretrainConfig.model_validate({"data": {"store": "s", "crop_sizes": [30]}})
    with pytest.raises(PretrainConfigError, match="data: crop size 30 px"):
        config.settings()
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump({"data": {"store": "s", "crop_sizes": [30]}}))
    with pytest.raises(
        PretrainConfigError, match=rf"{path}: invalid pretrain config:\n  data: crop"
    ):
        load_pretrain_config(path)  # at load time, before any work, naming the file


def test_a_checkpoint_records_no_storage_credentials(tmp_path: Path) -> None:
    from terracube.model.data.plan import LoaderParams
    from terracube.model.train.pretrain import PretrainSettings, checkpoint_settings

    settings = PretrainSettings(
        store="s3://bucket/c.zarr",
        checkpoint_dir=tmp_path,
        out_dir=tmp_path,
        storage_options={"key": "AKIA-EXAMPLE", "secret": "s3cr3t", "endpoint_url": "x"},
        loader=LoaderParams(crop_sizes=(32,)),
    )
    recorded = checkpoint_settings(settings)
    assert recorded["storage_options"] == ["endpoint_url", "key", "secret"]
    assert "s3cr3t" not in json.dumps(recorded) and "AKIA-EXAMPLE" not in json.dumps(recorded)
    assert recorded["loader"]["crop_sizes"] == [32] and recorded["checkpoint_dir"] == str(tmp_path)
