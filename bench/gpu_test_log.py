"""A pytest plugin for the GPU runs: each test's outcome, time and failure text, written the moment it ends.

A device call is killed at its time limit, and pytest prints failures and writes
its junit report only at the end of a session; this log survives the kill, so a
run cut short still says which tests failed and why. The file is named by
PAGODA_TEST_LOG (JSON lines); with xdist the reports arrive at the controller.
"""

from __future__ import annotations

import json
import os

import pytest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get("PAGODA_TEST_LOG")
    if not path or (report.when != "call" and report.outcome == "passed"):
        return  # setup and teardown are logged only when they fail (or skip)
    entry = {"test": report.nodeid, "when": report.when, "outcome": report.outcome,
             "seconds": round(report.duration, 3)}
    if report.failed:
        entry["error"] = str(report.longrepr)[-4000:]
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
