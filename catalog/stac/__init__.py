"""STAC: HTTP with retries, catalog sources (API or static), batched search, item normalisation."""
