"""Start, wait for and reliably stop the helper processes behind the test services.

Why a module of its own: every launcher needs the same three guarantees — a free loopback
port, a readiness wait that fails with the process's own log instead of hanging, and a
stop that never leaves a process behind (its own process group, terminate, wait, kill).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class ServiceUnavailable(RuntimeError):
    """A service cannot start because a system package is missing (not a bug in it).

    Fixtures turn this into a skip locally and into a failure under CI.
    """


class ServiceStartError(RuntimeError):
    """A service was installed but did not come up; the message carries its log tail."""


def free_port() -> int:
    """A currently free TCP port on loopback (the OS picks it, so parallel runs don't clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def require_executable(path_or_name: str, debian_package: str) -> str:
    """The absolute path of an executable, or ServiceUnavailable naming the package to install."""
    found = path_or_name if os.path.isfile(path_or_name) else shutil.which(path_or_name)
    if not found or not os.access(found, os.X_OK):
        raise ServiceUnavailable(
            f"{path_or_name} not found: install the Debian package {debian_package!r} "
            f"(apt-get install {debian_package})"
        )
    return found


def port_is_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _die_with_parent() -> None:
    """Runs in the child before exec: if the test process is killed, the kernel kills us too."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ManagedProcess:
    """A child in its own process group, with its output captured in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: signal.Signals = signal.SIGTERM

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except FileNotFoundError:
            return "(no log)"

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Polite signal to the leader, then SIGKILL to the whole group; always reaps."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout_s)
        # Whatever the leader left behind in its group (workers, backends) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout_s)


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> ManagedProcess:
    """Start `argv` in a new process group with stdout+stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            user=user,
            process_group=0,
            preexec_fn=_die_with_parent,
        )
    return ManagedProcess(name=name, popen=popen, log_path=log_path, stop_signal=stop_signal)


def wait_until(
    process: ManagedProcess,
    ready: Callable[[], bool],
    timeout_s: float,
    what: str,
) -> None:
    """Poll `ready` until true; fail fast with the log if the process died or time ran out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.is_running():
            raise ServiceStartError(
                f"{process.name} exited with code {process.popen.returncode} before {what}; "
                f"log {process.log_path}:\n{process.log_tail()}"
            )
        if ready():
            return
        time.sleep(0.05)
    raise ServiceStartError(
        f"{process.name} not ready ({what}) after {timeout_s:.0f} s; "
        f"log {process.log_path}:\n{process.log_tail()}"
    )


@contextlib.contextmanager
def stopping(process: ManagedProcess) -> Iterator[ManagedProcess]:
    """Yield the process and stop it on exit, whatever happened inside."""
    try:
        yield process
    finally:
        process.stop()
