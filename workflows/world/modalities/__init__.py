"""Per-modality writers of the synthetic world (Sentinel-1/2, Landsat, WorldCover, OSM)."""
