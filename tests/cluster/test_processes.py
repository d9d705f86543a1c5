"""Component processes: logs, graceful stop, no orphans."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from e2e.cluster import processes


def test_output_goes_to_the_log_and_stop_terminates(tmp_path: Path) -> None:
    proc = processes.start("sleeper", [sys.executable, "-c", "print('hello', flush=True); import time; time.sleep(60)"],
                           tmp_path)
    assert processes.wait_until(lambda: "hello" in proc.log_tail(), 10)
    assert proc.alive()
    proc.stop(timeout=5)
    assert not proc.alive()


def test_attached_children_die_with_their_parent(tmp_path: Path) -> None:
    """A killed test run must not leave an API server holding its ports."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from e2e.cluster import processes\n"
        f"p = processes.start('child', [sys.executable, '-c', 'import time; time.sleep(60)'], Path({str(tmp_path)!r}))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    child = int(parent.stdout.readline())
    assert processes.pid_alive(child)
    parent.kill()
    parent.wait()
    assert processes.wait_until(lambda: not processes.pid_alive(child), 10)


def test_detached_process_is_stopped_by_pid(tmp_path: Path) -> None:
    proc = processes.start("daemon", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, detached=True)
    stranger = processes.Process("daemon", proc.pid, proc.log)  # as read back from a state file
    assert stranger.alive()
    # Popen can return while the kernel is still setting up the new
    # program's argv (vfork): its command line may read empty for a moment.
    assert processes.wait_until(lambda: processes.runs(proc.pid, "time.sleep"), 5)
    assert not processes.runs(proc.pid, "kube-apiserver")
    stranger.stop(timeout=5)
    proc.popen.wait(5)  # reap our own child so its pid is really gone
    assert not processes.pid_alive(proc.pid)


def test_wait_until_times_out() -> None:
    started = time.monotonic()
    assert not processes.wait_until(lambda: False, 0.3, 0.05)
    assert time.monotonic() - started < 2
