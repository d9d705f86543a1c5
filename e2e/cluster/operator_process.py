"""`pagoda operator` (or another subcommand: the gateway) from this checkout
as a child process, killable and restartable like a pod.

Shared by the e2e suite (operator and gateway authenticated as the chart's
ServiceAccounts) and the operator's integration tests (as a ServiceAccount
holding only the operator's ClusterRole): they differ only in the arguments
and environment they launch it with.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class OperatorChild:
    """Behaviour over the `log` and `process` fields that a dataclass using it declares."""

    log: Path
    process: subprocess.Popen[bytes] | None
    #: The `pagoda` subcommand it runs.
    subcommand = "operator"

    def launch(self, args: list[str], env: dict[str, str]) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pagoda.cli", self.subcommand, *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            )

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when the pod's node dies (the operator mid-reconcile)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
