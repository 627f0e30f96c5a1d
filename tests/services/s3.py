"""A local S3-compatible object store (moto's server) with a fresh bucket.

Why: corpus writes to object storage go through fsspec/s3fs and GDAL's /vsis3, whose
behaviour (no rename, list-after-write, multipart) differs from a local directory. moto
runs as a separate `moto_server` process on loopback so no in-process AWS mock can
intercept or be intercepted by other tests. Dummy credentials and the endpoint are put
into the environment only while the store runs, and restored afterwards, so nothing can
reach a real AWS endpoint with real credentials.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services.process import LOOPBACK, free_port, spawn, stopping, wait_until

REGION = "us-east-1"
ACCESS_KEY = "terracube-test-key"
SECRET_KEY = "terracube-test-secret"

_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_REQUEST_PAYER",
    "AWS_NO_SIGN_REQUEST",
)


@dataclass(frozen=True)
class S3Store:
    """Handle on a running local S3 server with one empty bucket."""

    endpoint_url: str
    bucket: str
    startup_s: float

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options: pass as `storage_options=` to xarray, zarr, pandas, fsspec."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
        }

    def url(self, key: str) -> str:
        """s3:// URL of `key` in the bucket."""
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def environment(self) -> dict[str, str]:
        """AWS_* variables for botocore clients that take no explicit endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def gdal_config(self) -> dict[str, str]:
        """GDAL config options for /vsis3/{bucket}/{key} here (for the GDAL CLI's env)."""
        return {
            "AWS_S3_ENDPOINT": self.endpoint_url.split("://", 1)[1],
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def rasterio_env(self, **gdal_options: str) -> Any:
        """A rasterio.Env reading /vsis3/ from this server.

        rasterio refuses AWS credentials as plain Env options (EnvError); they must come
        through an AWSSession, so the endpoint and keys go there and the rest as options.
        """
        import rasterio
        from rasterio.session import AWSSession

        session = AWSSession(
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            endpoint_url=self.endpoint_url.split("://", 1)[1],
        )
        return rasterio.Env(
            session=session, AWS_HTTPS="NO", AWS_VIRTUAL_HOSTING="FALSE", **gdal_options
        )


@contextmanager
def patched_environ(updates: Mapping[str, str], remove: tuple[str, ...] = ()) -> Iterator[None]:
    """Set and remove environment variables for the block, restoring the old values after."""
    saved = {key: os.environ.get(key) for key in (*updates, *remove)}
    try:
        for key in remove:
            os.environ.pop(key, None)
        os.environ.update(updates)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _answers(endpoint_url: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint_url + "/moto-api/", timeout=2.0):
            return True
    except urllib.error.HTTPError:
        return True  # it answered HTTP, so it is up
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _create_bucket(store: S3Store) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=store.endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    client.create_bucket(Bucket=store.bucket)


@contextmanager
def run_s3_server(bucket: str | None = None, start_timeout_s: float = 30.0) -> Iterator[S3Store]:
    """Start moto_server on a free loopback port, create a bucket, set AWS_* env; undo on exit."""
    started = time.perf_counter()
    port = free_port()
    endpoint_url = f"http://{LOOPBACK}:{port}"
    bucket = bucket or f"terracube-test-{secrets.token_hex(4)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]
    with tempfile.TemporaryDirectory(prefix="terracube-s3-") as workdir:
        process = spawn("moto_server", argv, Path(workdir) / "moto.log", env=env, cwd=Path(workdir))
        with stopping(process):
            wait_until(
                process, lambda: _answers(endpoint_url), start_timeout_s, f"at {endpoint_url}"
            )
            store = S3Store(endpoint_url, bucket, startup_s=0.0)
            with patched_environ(store.environment(), remove=_AWS_VARS_TO_CLEAR):
                _create_bucket(store)
                yield S3Store(endpoint_url, bucket, startup_s=time.perf_counter() - started)
