"""The build config: one YAML file, validated before any work starts.

Unknown keys are errors that name their path; `${VAR}` / `${VAR:-default}` are
substituted from the environment so secrets stay out of the file; relative
paths resolve against the config file's folder. A secret (anything that came from
the environment) is never echoed back: `redacted()` is what logs and stores see.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from terracube.catalog.registry import MODALITIES, modality
from terracube.catalog.registry import is_osm as modality_is_osm

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config problem, worded for the person who wrote the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AoiConfig(_Strict):
    """Exactly one of a lon/lat bbox, a GeoJSON file, or an explicit tile-id list."""

    bbox: tuple[float, float, float, float] | None = None
    geojson: Path | None = None
    tiles: list[str] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> AoiConfig:
        given = [k for k in ("bbox", "geojson", "tiles") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of bbox, geojson, tiles (got {given or 'none'})")
        if self.bbox is not None:
            minlon, minlat, maxlon, maxlat = self.bbox
            if not (
                -90 <= minlat < maxlat <= 90 and -180 <= minlon <= 180 and -180 <= maxlon <= 180
            ):
                raise ValueError(
                    f"bbox {list(self.bbox)} is not [minlon, minlat, maxlon, maxlat] in degrees"
                )
        return self


class SamplingConfig(_Strict):
    mode: Literal["cover", "random", "stratified"] = "cover"
    n: int | None = Field(default=None, gt=0)
    n_per_class: int | None = Field(default=None, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _counts(self) -> SamplingConfig:
        if self.mode == "random" and self.n is None:
            raise ValueError("sampling mode 'random' needs n (how many tiles to draw)")
        if self.mode == "stratified" and self.n_per_class is None:
            raise ValueError("sampling mode 'stratified' needs n_per_class")
        return self


MAX_PERIODS = 120


class TimeConfig(_Strict):
    start: date
    periods: int = Field(default=12, gt=0, le=MAX_PERIODS)
    period: Literal["month"] | Annotated[int, Field(gt=0)] = "month"
    """'month' or a period length in days."""
    end: date | None = None
    """Last day to cover (inclusive), as stackstac / odc-stac / rslearn users write it;
    sets `periods` to the fewest periods from `start` that reach it. Give one of the two."""

    @model_validator(mode="before")
    @classmethod
    def _periods_from_end(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("end") is None:
            return data
        if "periods" in data:
            raise ValueError("give time.periods or time.end, not both")
        from terracube.catalog.timescheme import TimeScheme

        try:
            start = date.fromisoformat(str(data.get("start")))
        except ValueError:
            return data  # the start field's own check names it
        try:
            end = date.fromisoformat(str(data["end"]))
        except ValueError:
            raise ValueError(f"time.end {data['end']!r} is not a date (YYYY-MM-DD)") from None
        if end < start:
            raise ValueError(f"time.end {end} is before time.start {start}")
        period = data.get("period", "month")
        days = None if period == "month" else int(period)
        for periods in range(1, MAX_PERIODS + 1):
            _, stop = TimeScheme(start, periods, days).span()
            if stop.date() > end:
                return {**data, "periods": periods}
        raise ValueError(
            f"time.end {end} is more than {MAX_PERIODS} periods after time.start; "
            "use longer periods (time.period: <days>) or a later start"
        )


def _check_hosts(value: list[str] | None) -> list[str] | None:
    """`allowed_hosts` entries: host names, ".suffix" names, addresses or CIDR networks."""
    from terracube.catalog.stac.href_hosts import allowance_of

    allowance_of(value)  # ValueError names a malformed entry
    return value


class StaticSource(_Strict):
    source: Literal["static"]
    catalog: Path
    collection: str
    allowed_hosts: list[str] | None = None
    """Internal hosts its asset hrefs may reach (docs/security.md); public ones need none."""

    _hosts = field_validator("allowed_hosts")(_check_hosts)


class StacApiSourceConfig(_Strict):
    source: Literal["stac_api"]
    url: str | None = None
    profile: Literal["earth-search", "planetary-computer", "generic"] = "generic"
    collection: str | None = None
    sign: bool = False
    """Planetary Computer: sign asset URLs with the `planetary-computer` package."""
    query: dict[str, dict[str, Any]] | None = None
    allowed_hosts: list[str] | None = None
    """Internal hosts (names, ".suffix", addresses, CIDRs) its asset hrefs may reach:
    loopback, private and CGNAT addresses are refused otherwise (docs/security.md)."""

    _hosts = field_validator("allowed_hosts")(_check_hosts)

    @model_validator(mode="after")
    def _url_or_profile(self) -> StacApiSourceConfig:
        if self.profile == "generic" and not self.url:
            raise ValueError("a generic stac_api source needs url (or choose a profile)")
        if self.profile == "generic" and not self.collection:
            raise ValueError("a generic stac_api source needs collection")
        return self


class OsmFileSource(_Strict):
    source: Literal["osm_file"]
    path: Path


class OverpassSource(_Strict):
    source: Literal["overpass"]
    url: str = "https://overpass-api.de/api/interpreter"


SourceConfig = Annotated[
    StaticSource | StacApiSourceConfig | OsmFileSource | OverpassSource,
    Field(discriminator="source"),
]


class OutputConfig(_Strict):
    store: str
    """Local path or fsspec URL such as s3://bucket/corpus.zarr."""
    samples_per_shard: int | None = Field(default=None, gt=0, le=4096)
    """None: chosen from the corpus size (`workflows.sizing.default_samples_per_shard`:
    4 up to 80k samples, then enough to stay near 20k shards, at most 32)."""
    zstd_level: int = Field(default=3, ge=1, le=22)
    storage_options: dict[str, Any] = Field(default_factory=dict)


class ClusterConfig(_Strict):
    scheduler: str | None = None
    """Address of an existing Dask scheduler; None starts a LocalCluster."""
    workers: int | None = Field(default=None, gt=0)
    memory_limit: str = "auto"
    wave: int = Field(default=256, gt=0)
    """How many tile tasks the scheduler holds at once."""


class BuildConfig(_Strict):
    name: str
    aoi: AoiConfig
    sampling: SamplingConfig = SamplingConfig()
    time: TimeConfig
    modalities: dict[str, SourceConfig]
    output: OutputConfig
    cluster: ClusterConfig = ClusterConfig()
    base_dir: Path = Path()
    """Folder of the config file; set by `load_config`, not written by users."""
    _secrets: set[str] = PrivateAttr(default_factory=set)
    """Values substituted from the environment: never logged or stored."""

    @field_validator("modalities")
    @classmethod
    def _known_modalities(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError(f"name at least one modality ({', '.join(MODALITIES)})")
        for name, source in value.items():
            try:
                modality(name)
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None
            takes_osm = isinstance(source, OsmFileSource | OverpassSource)
            if modality_is_osm(name) != takes_osm:
                osm = [m for m in MODALITIES if modality_is_osm(m)]
                raise ValueError(
                    f"modality {name!r} cannot use source {source.source!r}: {', '.join(osm)} "
                    "takes osm_file/overpass, every other modality takes static/stac_api"
                )
        return value

    @property
    def secret_values(self) -> frozenset[str]:
        """Values that came from the environment: logs and failure tables scrub them."""
        return frozenset(self._secrets)

    def resolve(self, path: Path) -> Path:
        """A config path made absolute against the config file's folder."""
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def store_url(self) -> str:
        store = self.output.store
        if "://" in store:
            return store
        return str(self.resolve(Path(store)))


def substitute_env(text: str, environ: dict[str, str] | None = None) -> tuple[str, set[str]]:
    """Replace ${VAR} / ${VAR:-default}; return the text and the values that were secrets."""
    env = os.environ if environ is None else environ
    secrets: set[str] = set()

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            secrets.add(env[name])
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable {name} is not set: export it, or write ${{{name}:-default}}"
        )

    return _ENV.sub(repl, text), {s for s in secrets if s}


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(("function-", "tagged-union"))]
    return ".".join(p for p in parts if p not in {"static", "stac_api", "osm_file", "overpass"})


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid build config {source}:"]
    for err in error.errors():
        where = _location(err["loc"]) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see workflows/examples/*.yaml)"
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


def load_config(path: str | Path, environ: dict[str, str] | None = None) -> BuildConfig:
    """Read, substitute and validate a build config; errors name the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"build config {path} does not exist")
    text, secrets = substitute_env(path.read_text(), environ)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"build config {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"build config {path} must be a mapping of keys, got {type(raw).__name__}"
        )
    if "base_dir" in raw:
        raise ConfigError(f"build config {path}: base_dir is set by terracube; remove it")
    raw["base_dir"] = str(path.resolve().parent)
    try:
        config = BuildConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    config._secrets = secrets
    return config


def redacted(config: BuildConfig) -> dict[str, Any]:
    """The config as a dict with every environment-provided value replaced by '***'."""
    path_text = config.model_dump(mode="json")
    secrets = config._secrets

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, str) and any(secret in value for secret in secrets):
            return "***"
        return value

    scrubbed = scrub(path_text)
    opts = scrubbed.get("output", {}).get("storage_options", {})
    for key in list(opts):
        if any(word in key.lower() for word in ("key", "secret", "token", "password")):
            opts[key] = "***"
    return scrubbed
