"""The synthetic world: embedded default data whose exact answer is known.

`generate_world(out, seed, size)` writes Sentinel-2 L2A, Sentinel-1 RTC,
Landsat C2 L2 and WorldCover COGs with STAC (static catalog + NDJSON), an OSM
extract, a ready `build.yaml`, and the ground truth that `load_truth` reads.
"""

from terracube.workflows.world.generate import WorldManifest, generate_world
from terracube.workflows.world.stac import rewrite_hrefs
from terracube.workflows.world.truth import WorldTruth, load_truth

__all__ = ["WorldManifest", "WorldTruth", "generate_world", "load_truth", "rewrite_hrefs"]
