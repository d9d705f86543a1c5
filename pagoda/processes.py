"""Starting pagoda's own servers as child processes on loopback, for the benchmarks and tests.

`pagoda serve` and `pagoda gateway` both report readiness on GET /ready; a child is handed back
only once it answers 200 there, or it is killed and its failure raised.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_pagoda(args: list[str], timeout: float, **popen: Any) -> tuple[subprocess.Popen, str]:
    """`pagoda ARGS --host 127.0.0.1 --port PORT` (a subcommand and its arguments) and its base URL,
    once its /ready answers 200; RuntimeError when it exits first or stays unready for `timeout` s."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "pagoda.cli", *args, "--host", "127.0.0.1", "--port", str(port)],
                               **popen)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"pagoda {args[0]} {'exited' if process.returncode else 'did not become ready'}"
                               f" (status {process.returncode})")
        time.sleep(0.1)
