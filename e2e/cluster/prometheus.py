"""A real Prometheus (Debian's package) on loopback with static scrape
targets, for the tests that check what the chart's PromQL and rules do with
pagoda's metrics: the dashboard test and the autoscaling e2e scenario.

Static targets carry the labels a ServiceMonitor or PodMonitor would put on
an engine's series (namespace, pod, ...), so no service discovery is needed.
"""

from __future__ import annotations

import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import processes
from .launcher import ClusterError, free_port, http_ok
from .processes import Process

#: Every target is scraped this often: tests wait seconds, not minutes.
SCRAPE_INTERVAL = "1s"


@dataclass
class Prometheus:
    """A running Prometheus; `url` is its HTTP API on loopback."""

    url: str
    process: Process

    def stop(self) -> None:
        self.process.stop()


def binary() -> Path:
    """Debian's prometheus, which `make test` installs (mk/chart.mk)."""
    found = Path(shutil.which("prometheus") or "/usr/bin/prometheus")
    if not found.is_file():
        raise ClusterError("no prometheus binary: `make chart-prereqs` installs Debian's package")
    return found


def scrape_config(job: str, target: str, labels: dict[str, str] | None = None,
                  honor_labels: bool = False) -> dict[str, Any]:
    """One job scraping `target` (host:port), its series labelled `labels`."""
    config: dict[str, Any] = {"job_name": job, "static_configs": [{"targets": [target], "labels": labels or {}}]}
    if honor_labels:
        config["honor_labels"] = True
    return config


def start(workdir: Path, scrape_configs: list[dict[str, Any]], timeout: float = 60) -> Prometheus:
    """Starts Prometheus with its data and log under `workdir` and waits
    until it is ready; it dies with the test process."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {"global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
              "scrape_configs": scrape_configs}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    process = processes.start("prometheus", [
        str(binary()), f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={urllib.parse.urlsplit(url).netloc}"], workdir)
    if not processes.wait_until(lambda: not process.alive() or http_ok(url + "/-/ready"), timeout, 0.3) or not process.alive():
        process.stop()
        raise ClusterError(f"prometheus did not become ready; last lines of {process.log}:\n{process.log_tail()}")
    return Prometheus(url, process)

