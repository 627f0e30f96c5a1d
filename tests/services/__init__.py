"""Real local services the tests (and benchmarks) run against, all on 127.0.0.1.

- `postgres_pgstac.run_pgstac_database`: PostgreSQL 15 + PostGIS + pgstac.
- `stac_api.run_stac_api`: stac-fastapi-pgstac under uvicorn, counting /search requests.
- `http_assets.run_asset_server`: static files with range requests, byte counts, faults.
- `fault_proxy.run_fault_proxy`: scripted faults in front of any HTTP service.
- `s3.run_s3_server`: moto's S3-compatible server with a bucket and fsspec options.

Each launcher is a context manager that never leaves a process behind. A missing system
package raises `process.ServiceUnavailable`; tests/conftest.py turns that into a skip,
or into a failure when the CI environment variable is set.
"""
