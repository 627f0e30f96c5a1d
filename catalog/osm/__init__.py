"""OpenStreetMap inputs: features by category (`features`), read from extracts (`extract`)."""
