"""Child processes of the local control plane: started with their output in a
log file, stopped gracefully, and never left running by accident.

Attached processes (the pytest fixture) ask the kernel to send them SIGTERM
when the test process dies, even by SIGKILL, so an interrupted run leaves no
API server holding ports. Detached ones (`make cluster-up`) outlive the
command that started them and are stopped later by pid.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Process:
    """One running component; `log` holds its stdout and stderr."""

    name: str
    pid: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.popen is not None:
            if self.popen.poll() is None:
                self.popen.terminate()
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
            return
        terminate_pid(self.pid, timeout)


def start(name: str, argv: Sequence[str], log_dir: Path, *, detached: bool = False,
          env: dict[str, str] | None = None) -> Process:
    """Starts `argv` with output to `<log_dir>/<name>.log`."""
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=detached,  # a detached one ignores the terminal's Ctrl-C
            preexec_fn=None if detached else _die_with_parent,
        )
    return Process(name, popen.pid, log, popen)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def runs(pid: int, name: str) -> bool:
    """Whether `pid` is alive and still the component `name` (its command
    line names it), not an unrelated process that reused a stale pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return name.encode() in cmdline and pid_alive(pid)


def terminate_pid(pid: int, timeout: float = 10.0) -> None:
    """Stops a process that is not our child (a detached cluster's component)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_until(lambda: not pid_alive(pid), wait):
            return


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Polls `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
