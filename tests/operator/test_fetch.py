"""`pagoda fetch-model`: skipped when present, resumed when interrupted, pvc a no-op."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pagoda.operator import fetch
from pagoda.operator.source import ModelSource


class FakeHub:
    """Writes two files per download; can be told to die after the first."""

    def __init__(self, fail_after_first: bool = False) -> None:
        self.calls = 0
        self.fail_after_first = fail_after_first

    def __call__(self, source: ModelSource, dest: Path) -> None:
        self.calls += 1
        if not (dest / "config.json").exists():
            (dest / "config.json").write_text(source.repo)
        if self.fail_after_first:
            self.fail_after_first = False
            raise ConnectionError("connection reset")
        (dest / "model.safetensors").write_text("weights")


def test_downloads_once_then_skips(tmp_path: Path) -> None:
    hub = FakeHub()
    assert fetch.fetch("hf://org/name@v2", tmp_path / "m", hub)
    assert not fetch.fetch("hf://org/name@v2", tmp_path / "m", hub)
    assert hub.calls == 1
    assert (tmp_path / "m" / "model.safetensors").read_text() == "weights"


def test_interrupted_download_leaves_no_marker_and_resumes(tmp_path: Path) -> None:
    hub = FakeHub(fail_after_first=True)
    with pytest.raises(ConnectionError):
        fetch.fetch("hf://org/name", tmp_path, hub)
    assert not fetch.is_complete(fetch.parse_source("hf://org/name"), tmp_path)
    assert (tmp_path / "config.json").exists()  # partial files stay for the resume
    assert fetch.fetch("hf://org/name", tmp_path, hub)
    assert hub.calls == 2 and fetch.is_complete(fetch.parse_source("hf://org/name"), tmp_path)


def test_marker_of_another_revision_does_not_count(tmp_path: Path) -> None:
    hub = FakeHub()
    fetch.fetch("hf://org/name@v1", tmp_path, hub)
    assert fetch.fetch("hf://org/name@v2", tmp_path, hub)
    assert hub.calls == 2


def test_pvc_source_is_a_no_op(tmp_path: Path) -> None:
    hub = FakeHub()
    assert not fetch.fetch("pvc://claim/dir", tmp_path / "x", hub)
    assert hub.calls == 0 and not (tmp_path / "x").exists()


def test_malformed_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="malformed model source"):
        fetch.fetch("s3://bucket/model", tmp_path, FakeHub())


def test_concurrent_replicas_download_once(tmp_path: Path) -> None:
    hub = FakeHub()
    threads = [threading.Thread(target=fetch.fetch, args=("hf://org/name", tmp_path, hub)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hub.calls == 1


def test_cli_is_registered() -> None:
    from pagoda.cli import build_parser

    args = build_parser().parse_args(["fetch-model", "pvc://c", "/tmp/x"])
    assert args.func(args) == 0
