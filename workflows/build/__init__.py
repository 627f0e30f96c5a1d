"""Running a build: shard tasks on Dask, waves, failures, progress, run logs and status."""
