"""The corpus Zarr v3 format in one place: schema, writer, sample records, georeference, validation, and the shard reader that parses the same bytes."""
