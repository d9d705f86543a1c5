"""The builder's pure parts: pinned versions, wrapper replacements, cache layout."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from e2e.cluster import build


def test_versions_file_pins_every_component() -> None:
    versions = build.read_versions()
    # LWS_VERSION pins the LeaderWorkerSet CRD, read from the Go module cache: nothing is built from it.
    assert set(versions) == {"KUBERNETES_VERSION", "ETCD_VERSION", "KWOK_VERSION", "HELM_VERSION",
                             "PROMETHEUS_ADAPTER_VERSION", "LWS_VERSION"}
    assert all(v.startswith("v") and v.count(".") == 2 for v in versions.values())
    assert [c.version for c in build.components()] == [
        versions["ETCD_VERSION"], versions["KWOK_VERSION"], versions["HELM_VERSION"],
        versions["PROMETHEUS_ADAPTER_VERSION"], versions["KUBERNETES_VERSION"]]


def test_versions_file_is_also_shell_syntax() -> None:
    out = subprocess.run(["sh", "-c", f". {build.VERSIONS_FILE} && echo $KUBERNETES_VERSION"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == build.read_versions()["KUBERNETES_VERSION"]


def test_kubernetes_staging_modules_use_the_matching_v0_release() -> None:
    kube = build.components({"KUBERNETES_VERSION": "v1.37.2", "ETCD_VERSION": "v3.6.16", "KWOK_VERSION": "v0.8.0",
                             "HELM_VERSION": "v3.22.0", "PROMETHEUS_ADAPTER_VERSION": "v0.12.0"})[-1]
    upstream = {
        "Require": [{"Path": "k8s.io/api"}, {"Path": "k8s.io/client-go"}, {"Path": "github.com/x/y"}],
        "Replace": [
            {"Old": {"Path": "k8s.io/api"}, "New": {"Path": "./staging/src/k8s.io/api"}},
            {"Old": {"Path": "k8s.io/client-go"}, "New": {"Path": "./staging/src/k8s.io/client-go"}},
            {"Old": {"Path": "github.com/x/y"}, "New": {"Path": "github.com/fork/y", "Version": "v1.2.3"}},
            {"Old": {"Path": "go.etcd.io/forbidden"}, "New": {"Path": "./FORBIDDEN_DEPENDENCY"}},
        ],
    }
    assert build.replacements(upstream, kube) == [
        "-replace=k8s.io/api=k8s.io/api@v0.37.2",
        "-replace=k8s.io/client-go=k8s.io/client-go@v0.37.2",
        "-replace=github.com/x/y=github.com/fork/y@v1.2.3",
    ]


def test_etcd_siblings_use_the_same_version() -> None:
    etcd = build.components()[0]
    upstream = {"Require": [{"Path": "go.etcd.io/etcd/api/v3"}],
                "Replace": [{"Old": {"Path": "go.etcd.io/etcd/api/v3"}, "New": {"Path": "../api"}}]}
    assert build.replacements(upstream, etcd) == [f"-replace=go.etcd.io/etcd/api/v3=go.etcd.io/etcd/api/v3@{etcd.version}"]


def test_missing_binary_names_the_make_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(build.BuildError, match="make cluster-binaries"):
        build.binary("kube-apiserver")


def test_component_counts_as_built_only_with_binaries_and_assets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kwok = next(c for c in build.components() if c.name == "kwok")
    assert kwok.directory.is_relative_to(tmp_path)
    kwok.bin_dir.mkdir(parents=True)
    (kwok.bin_dir / "kwok").write_text("")
    assert not kwok.is_built()  # stages missing
    for name in kwok.assets:
        (kwok.directory / name).parent.mkdir(parents=True, exist_ok=True)
        (kwok.directory / name).write_text("")
    assert kwok.is_built()
    assert build.binary("kwok") == kwok.bin_dir / "kwok"


def test_failed_go_command_raises_build_error(tmp_path: Path) -> None:
    with pytest.raises(build.BuildError, match="failed with exit code"):
        build._go(["mod", "edit", "-json", str(tmp_path / "missing.mod")], tmp_path, capture=True)


def test_a_failed_build_leaves_nothing_behind_and_exits_non_zero(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("GOPROXY", "off")  # fail at once, offline
    monkeypatch.setattr(os, "nice", lambda _: 0)
    bogus = build.Component("bogus", "example.invalid/nothing", "v0.0.1", {"x": "example.invalid/nothing"})
    monkeypatch.setattr(build, "components", lambda versions=None: [bogus])
    assert build.main() == 1
    assert "cluster-binaries: FAILED: `go mod download" in capsys.readouterr().err
    assert list(build.cache_root().iterdir()) == []
