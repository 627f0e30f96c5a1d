"""The build config: strict keys, field-named errors, env substitution, redaction."""

from pathlib import Path

import pytest
from terracube.workflows.config import ConfigError, load_config, redacted

EXAMPLES = Path(__file__).resolve().parents[2] / "workflows" / "examples"

GOOD = """
name: t
aoi: {bbox: [5.9, 47.0, 6.1, 47.1]}
time: {start: "2022-01-01", periods: 4}
modalities:
  sentinel2_l2a: {source: static, catalog: stac/catalog.json, collection: sentinel-2-l2a}
  openstreetmap: {source: osm_file, path: osm/world.osm}
output: {store: corpus.zarr, samples_per_shard: 2}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "build.yaml"
    path.write_text(text)
    return path


def test_good_config_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.time.periods == 4 and config.time.period == "month"
    source = config.modalities["sentinel2_l2a"]
    assert config.resolve(source.catalog) == (tmp_path / "stac/catalog.json").resolve()
    assert config.store_url == str((tmp_path / "corpus.zarr").resolve())
    assert config.sampling.mode == "cover" and config.cluster.scheduler is None


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (("output: {", "output: {stroe: x, "), "output.stroe", "unknown key"),
        (('start: "2022-01-01"', 'start: "2022-13-45"'), "time.start", "date"),
        (("bbox: [5.9, 47.0, 6.1, 47.1]", "bbox: [5.9, 47.1, 6.1, 47.0]"), "aoi", "bbox"),
        (("sentinel2_l2a:", "sentinel9:"), "modalities", "unknown modality 'sentinel9'"),
        (("source: osm_file, path", "source: static, catalog"), "modalities", "openstreetmap"),
        (("periods: 4", "periods: 0"), "time.periods", "greater than 0"),
        (("source: static, catalog", "source: stac, catalog"), "modalities.sentinel2_l2a", "tag"),
    ],
)
def test_bad_configs_name_the_field(
    tmp_path: Path, edit: tuple[str, str], field: str, words: str
) -> None:
    old, new = edit
    assert old in GOOD
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD.replace(old, new, 1)))
    message = str(err.value)
    assert field in message and words in message, message


def test_env_substitution_and_redaction(tmp_path: Path) -> None:
    text = GOOD.replace(
        "output: {store: corpus.zarr, samples_per_shard: 2}",
        "output:\n  store: s3://${BUCKET}/c.zarr\n  storage_options: {key: ${KEY}, secret: ${SECRET:-none}}",
    )
    env = {"BUCKET": "my-bucket", "KEY": "AKIAEXAMPLEKEY"}
    config = load_config(write(tmp_path, text), environ=env)
    assert config.store_url == "s3://my-bucket/c.zarr"
    assert config.output.storage_options == {"key": "AKIAEXAMPLEKEY", "secret": "none"}
    shown = redacted(config)
    assert "AKIAEXAMPLEKEY" not in str(shown) and "my-bucket" not in str(shown)
    assert shown["output"]["storage_options"]["secret"] == "***"


def test_missing_env_var_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NOPE_NOT_SET"):
        load_config(
            write(tmp_path, GOOD.replace("corpus.zarr", "${NOPE_NOT_SET}/c.zarr")), environ={}
        )


def test_not_a_file_or_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed"))


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_validate(example: Path) -> None:
    env = {"TERRACUBE_BUCKET": "b", "AWS_ACCESS_KEY_ID": "k" * 8, "AWS_SECRET_ACCESS_KEY": "s" * 8}
    config = load_config(example, environ=env)
    assert config.modalities


def test_a_collection_configured_on_a_named_profile_is_the_one_searched(tmp_path: Path) -> None:
    """earth-search knows sentinel-2-l2a; a config naming its collection-1 reprocessing gets
    that one (the profile's table fills in only what the config leaves out). No request is
    made: a source opens its landing page on first search."""
    from terracube.workflows.planning import make_group_source

    text = GOOD.replace(
        "sentinel2_l2a: {source: static, catalog: stac/catalog.json, collection: sentinel-2-l2a}",
        "sentinel2_l2a: {source: stac_api, profile: earth-search, collection: sentinel-2-c1-l2a}\n"
        "  landsat_c2l2: {source: stac_api, profile: earth-search}",
    )
    config = load_config(write(tmp_path, text))
    source = make_group_source(config, ["sentinel2_l2a", "landsat_c2l2"])
    assert source.collection_for("sentinel2_l2a") == "sentinel-2-c1-l2a"
    assert source.collection_for("landsat_c2l2") == "landsat-c2-l2"
