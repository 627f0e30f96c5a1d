"""A throwaway PostgreSQL 15 + PostGIS + pgstac database on loopback.

Why real Postgres: pgstac's search (CQL2, the query extension, token paging) is SQL
inside the database; only the real thing shows what a STAC API backed by it returns.
The cluster lives in a temp dir owned by the `postgres` OS user (the server refuses to
run as root), listens on 127.0.0.1 at a free port with password auth, and is deleted on exit.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.services.process import (
    LOOPBACK,
    ServiceStartError,
    ServiceUnavailable,
    free_port,
    port_is_open,
    require_executable,
    spawn,
    stopping,
    wait_until,
)

PG_BIN = Path(os.environ.get("TERRACUBE_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_SHARE = Path(os.environ.get("TERRACUBE_PG_SHARE", "/usr/share/postgresql/15"))
POSTGRES_DEBIAN_PACKAGE = "postgresql-15"
POSTGIS_DEBIAN_PACKAGE = "postgresql-15-postgis-3"
OS_USER = "postgres"
DB_USER = "postgres"
DB_NAME = "pgstac"

# Durability is pointless for a throwaway test database; these make start-up and loads fast.
_FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "64MB",
    "max_connections": "40",
}


@dataclass(frozen=True)
class PgstacDatabase:
    """Connection facts of a running pgstac database (password auth over TCP loopback)."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    startup_s: float
    """Seconds from initdb to a migrated pgstac schema."""

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"

    def libpq_env(self) -> dict[str, str]:
        """PG* variables for clients that read libpq's environment (stac-fastapi-pgstac does)."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": self.dbname,
        }


def check_installed() -> tuple[Path, Path]:
    """initdb and postgres paths; ServiceUnavailable naming the Debian package if missing."""
    initdb = require_executable(str(PG_BIN / "initdb"), POSTGRES_DEBIAN_PACKAGE)
    postgres = require_executable(str(PG_BIN / "postgres"), POSTGRES_DEBIAN_PACKAGE)
    if not (PG_SHARE / "extension" / "postgis.control").is_file():
        raise ServiceUnavailable(
            f"PostGIS for PostgreSQL 15 not found under {PG_SHARE / 'extension'}: "
            f"install the Debian package {POSTGIS_DEBIAN_PACKAGE!r}"
        )
    try:
        pwd.getpwnam(OS_USER)
    except KeyError as exc:
        raise ServiceUnavailable(
            f"OS user {OS_USER!r} missing (created by the {POSTGRES_DEBIAN_PACKAGE!r} package)"
        ) from exc
    return Path(initdb), Path(postgres)


def _prepare_cluster(workdir: Path, initdb: Path, password: str) -> Path:
    """initdb as the postgres user into `workdir/data`; returns the data dir."""
    account = pwd.getpwnam(OS_USER)
    os.chown(workdir, account.pw_uid, account.pw_gid)
    os.chmod(workdir, 0o700)
    password_file = workdir / "password"
    password_file.write_text(password + "\n")
    os.chown(password_file, account.pw_uid, account.pw_gid)
    os.chmod(password_file, 0o600)
    data_dir = workdir / "data"
    result = subprocess.run(
        [
            str(initdb),
            "-D",
            str(data_dir),
            "-U",
            DB_USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={password_file}",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        user=OS_USER,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    password_file.unlink()
    if result.returncode != 0:
        raise ServiceStartError(f"initdb failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return data_dir


def _migrate(database: PgstacDatabase) -> None:
    """Create the database, then install the pgstac schema pypgstac was released with."""
    import psycopg
    from pypgstac.db import PgstacDB
    from pypgstac.migrate import Migrate

    admin_dsn = database.dsn.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database.dbname}"')
    db = PgstacDB(dsn=database.dsn)
    try:
        Migrate(db).run_migration()
    finally:
        db.close()


@contextmanager
def run_pgstac_database(start_timeout_s: float = 60.0) -> Iterator[PgstacDatabase]:
    """Start PostgreSQL+PostGIS, migrate pgstac, yield its connection facts, then destroy it."""
    initdb, postgres = check_installed()
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="terracube-pgstac-"))
    try:
        password = secrets.token_urlsafe(18)
        data_dir = _prepare_cluster(workdir, initdb, password)
        port = free_port()
        argv = [
            str(postgres),
            "-D",
            str(data_dir),
            "-p",
            str(port),
            "-c",
            f"listen_addresses={LOOPBACK}",
            "-c",
            f"unix_socket_directories={workdir}",
        ]
        for key, value in _FAST_SETTINGS.items():
            argv += ["-c", f"{key}={value}"]
        log_path = workdir / "postgres.log"
        log_path.touch()
        account = pwd.getpwnam(OS_USER)
        os.chown(log_path, account.pw_uid, account.pw_gid)
        # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, exit cleanly.
        process = spawn(
            "postgres", argv, log_path, cwd=workdir, user=OS_USER, stop_signal=signal.SIGINT
        )
        with stopping(process):
            wait_until(
                process,
                lambda: port_is_open(port) and (workdir / f".s.PGSQL.{port}").exists(),
                start_timeout_s,
                f"listening on {LOOPBACK}:{port}",
            )
            database = PgstacDatabase(LOOPBACK, port, DB_USER, password, DB_NAME, 0.0)
            _migrate(database)
            yield PgstacDatabase(
                LOOPBACK, port, DB_USER, password, DB_NAME, time.perf_counter() - started
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
