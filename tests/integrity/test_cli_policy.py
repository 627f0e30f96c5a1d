"""One error policy for every command (issue 19, points 3-5, 7 and 9): each input of the
issue's list gives one or two `error:` lines naming the input and the fix, the exit
code the policy says, and never a traceback."""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from terracube.model.train.pretrain import train
from terracube.workflows.cli.app import app
from terracube.workflows.cli.common import EXIT_INTERRUPTED, EXIT_USER_ERROR
from terracube.workflows.pretrain_config import load_pretrain_config
from terracube.workflows.world import WorldManifest
from typer.testing import CliRunner

from tests.loader.corpus_fixture import write_loader_corpus
from tests.model.test_pretrain import write_config
from tests.workflows.workflows_support import world_config

runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def assert_one_line_error(result: Any, *words: str, code: int = EXIT_USER_ERROR) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for word in words:
        assert word in result.output, result.output


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "corpus.zarr"
    write_loader_corpus(path)
    return path


# --------------------------------------------------------------------------- checkpoints


def _bad_checkpoints(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "random bytes": os.urandom(4096),
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "empty": b"",
    }
    out = {}
    for name, data in files.items():
        path = folder / f"{name.replace(' ', '_')}.pt"
        path.write_bytes(data)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def good_checkpoint(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    config = write_config(
        folder, corpus, steps=1, **{"checkpoint.interval": 1, "optim.warmup_steps": 0}
    )
    return train(load_pretrain_config(config).settings())


@pytest.mark.parametrize("kind", ["random bytes", "truncated", "empty"])
def test_a_bad_checkpoint_is_named_in_one_line(
    kind: str, good_checkpoint: Path, corpus: Path, tmp_path: Path
) -> None:
    bad = _bad_checkpoints(tmp_path / "bad", good_checkpoint)[kind]
    result = invoke(
        "evaluate", str(bad), "--task", "worldcover-classification", "--data", str(corpus),
        "--out", str(tmp_path / "eval"),
    )  # fmt: skip
    assert_one_line_error(result, bad.name)
    assert "Aborted" not in result.output


def test_resuming_from_a_random_bytes_checkpoint_is_one_line(
    good_checkpoint: Path, corpus: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path, corpus, steps=2)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "step_00000001.pt").write_bytes(os.urandom(2048))
    result = invoke("pretrain", str(config))
    assert_one_line_error(result, "step_00000001.pt", "cannot resume", "move it away")


def test_a_batch_larger_than_the_corpus_is_one_line(corpus: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, corpus, **{"data.batch_size": 64})
    assert_one_line_error(invoke("pretrain", str(config)), "lower batch_size")


def test_ctrl_c_during_pretrain_says_what_is_kept(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import terracube.workflows.pretrain_config as pretrain_config

    def interrupted(*args: object, **kwargs: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_config, "train", interrupted)
    result = invoke("pretrain", str(write_config(tmp_path, corpus)))
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert "checkpoint" in result.output and "shards" not in result.output


# --------------------------------------------------------------------------- build inputs


def test_an_unreachable_scheduler_fails_fast_with_its_address(
    tmp_path: Path, world: WorldManifest
) -> None:
    config = world_config(world, tmp_path, modalities=("worldcover",))
    started = time.monotonic()
    result = invoke("build", str(config), "--scheduler", "tcp://127.0.0.1:9", "--no-progress")
    assert_one_line_error(result, "tcp://127.0.0.1:9", "cannot reach")
    assert time.monotonic() - started < 30  # Dask's own default retried 36 s, then 83 lines


def test_a_scheduler_clash_names_where_each_side_came_from(
    tmp_path: Path, world: WorldManifest
) -> None:
    config = world_config(
        world, tmp_path, modalities=("worldcover",), extra={"cluster": {"workers": 2}}
    )
    result = invoke("build", str(config), "--scheduler", "tcp://127.0.0.1:9")
    assert_one_line_error(result, "--scheduler", "cluster.workers in the config")
    assert "--synchronous" not in result.output and "--workers" not in result.output


def test_zero_workers_is_refused(tmp_path: Path, world: WorldManifest) -> None:
    config = world_config(world, tmp_path, modalities=("worldcover",))
    result = invoke("build", str(config), "--workers", "0")
    assert result.exit_code == EXIT_USER_ERROR and "Traceback" not in result.output
    assert "--workers" in result.output


def test_an_output_store_that_is_a_file_writes_nothing(
    tmp_path: Path, world: WorldManifest
) -> None:
    (tmp_path / "regular_file").write_text("mine")
    config = world_config(world, tmp_path, store="regular_file", modalities=("worldcover",))
    for command in ("plan", "build"):
        assert_one_line_error(invoke(command, str(config)), "output.store", "is a file")
    assert not (tmp_path / "regular_file.run").exists()
    assert (tmp_path / "regular_file").read_text() == "mine"


class _NotStac(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><body>a web page, not STAC</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def html_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotStac)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_server_that_is_not_stac_is_said_to_answer(
    tmp_path: Path, world: WorldManifest, html_server: str
) -> None:
    config = world_config(world, tmp_path, modalities=("worldcover",))
    document = yaml.safe_load(config.read_text())
    document["modalities"]["worldcover"] = {
        "source": "stac_api", "url": html_server, "collection": "esa-worldcover",
    }  # fmt: skip
    config.write_text(yaml.safe_dump(document))
    result = invoke("plan", str(config), "--dry-run")
    assert_one_line_error(result, html_server, "answered, but not with a STAC API")
    assert "cannot be reached" not in result.output


def test_a_missing_store_names_a_command_not_a_function(tmp_path: Path) -> None:
    result = invoke("status", str(tmp_path / "absent.zarr"))
    assert_one_line_error(result, "absent.zarr", "terracube build")
    assert "create_corpus" not in result.output


def test_validate_of_a_missing_store_exits_like_every_command(tmp_path: Path) -> None:
    assert_one_line_error(invoke("validate", str(tmp_path / "absent.zarr")), "absent.zarr")


# --------------------------------------------------------------------------- demo


def test_demo_never_touches_a_world_folder(tmp_path: Path) -> None:
    world = tmp_path / "w"
    assert invoke("world", "--out", str(world)).exit_code == 0
    config = (world / "build.yaml").read_bytes()
    result = invoke("demo", "--out", str(world), "--size", "test", "--no-progress")
    assert_one_line_error(result, str(world), "did not write", "build.yaml")
    assert (world / "build.yaml").read_bytes() == config
    assert not (world / "corpus.zarr").exists()


# --------------------------------------------------------------------------- conventions


def test_version_help_and_debug() -> None:
    version = invoke("--version")
    assert version.exit_code == 0 and version.output.startswith("terracube ")
    for command in ("build", "status", "validate", "pretrain", "evaluate", "repair"):
        shown = invoke(command, "--help")
        assert shown.exit_code == 0 and "<bool>" not in shown.output, shown.output
    for command in ("plan", "status", "validate", "evaluate", "model-info"):
        assert "--json" in invoke(command, "--help").output, command


def test_debug_keeps_the_traceback_for_that_invocation_only(tmp_path: Path) -> None:
    result = invoke("--debug", "status", str(tmp_path / "absent.zarr"))
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception) and "absent.zarr" in str(result.exception)
    assert_one_line_error(invoke("status", str(tmp_path / "absent.zarr")), "absent.zarr")
