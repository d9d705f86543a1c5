"""Builds the control plane's pinned upstream binaries from the Go module proxy.

No container engine or release download is reachable here, but the Go module
proxy is, so every binary is compiled from its published module at the version
pinned in versions.env. Each upstream module is built through a generated
wrapper module: upstream go.mod files replace their sibling modules with
relative paths (Kubernetes' staging/ tree, etcd's api/ and client/), which Go
ignores in a dependency, so the wrapper replaces each of them with its published
release of the same version.

Built binaries land in ``<cache>/pagoda/k8s/<component>-<version>/bin`` and are
reused; a component is only rebuilt when its version changes.

    python -m e2e.cluster.build            # build what is missing, print the bin dirs
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSIONS_FILE = Path(__file__).with_name("versions.env")


class BuildError(RuntimeError):
    """A component could not be built; the message says which and why."""


@dataclass(frozen=True)
class Component:
    """One upstream Go module and the main packages built from it."""

    name: str
    module: str
    version: str
    # binary name -> main package path
    binaries: dict[str, str]
    # The release that stands in for modules the upstream go.mod replaces with
    # a relative path (None: same version as the module itself).
    sibling_version: str | None = None
    # -X linker settings, so that `--version` and the API's /version are real.
    stamps: dict[str, str] = field(default_factory=dict)
    # Files kept beside the binaries: cache-relative name -> path inside the
    # module (KWOK's stage definitions, which its binary does not embed).
    assets: dict[str, str] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    @property
    def bin_dir(self) -> Path:
        return self.directory / "bin"

    def is_built(self) -> bool:
        return all((self.bin_dir / name).is_file() for name in self.binaries) and all(
            (self.directory / name).is_file() for name in self.assets
        )


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parses the KEY=VALUE lines of versions.env (comments and blanks skipped)."""
    versions: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    return versions


def cache_root() -> Path:
    """Per-user cache shared by every clone, so a second checkout (or CI's
    next run on the same machine) reuses the binaries."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pagoda" / "k8s"


def components(versions: dict[str, str] | None = None) -> list[Component]:
    """The pinned components, in build order (smallest first, so a broken
    toolchain or proxy shows up before the long Kubernetes build)."""
    v = versions or read_versions()
    kube = v["KUBERNETES_VERSION"]
    major, minor, _ = kube.lstrip("v").split(".", 2)
    kube_cmd = "k8s.io/kubernetes/cmd/"
    return [
        Component(
            name="etcd",
            module="go.etcd.io/etcd/server/v3",
            version=v["ETCD_VERSION"],
            binaries={"etcd": "go.etcd.io/etcd/server/v3"},
        ),
        Component(
            name="kwok",
            module="sigs.k8s.io/kwok",
            version=v["KWOK_VERSION"],
            binaries={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
            stamps={"sigs.k8s.io/kwok/pkg/consts.Version": v["KWOK_VERSION"]},
            assets={
                f"stages/{name}.yaml": f"kustomize/stage/{kind}/{variant}/{name}.yaml"
                for kind, variant, name in (
                    ("node", "fast", "node-initialize"),
                    ("node", "heartbeat-with-lease", "node-heartbeat-with-lease"),
                    ("pod", "fast", "pod-ready"),
                    ("pod", "fast", "pod-complete"),
                    ("pod", "fast", "pod-delete"),
                )
            },
        ),
        Component(
            name="helm",
            module="helm.sh/helm/v3",
            version=v["HELM_VERSION"],
            binaries={"helm": "helm.sh/helm/v3/cmd/helm"},
            stamps={"helm.sh/helm/v3/internal/version.version": v["HELM_VERSION"]},
        ),
        Component(
            name="prometheus-adapter",
            module="sigs.k8s.io/prometheus-adapter",
            version=v["PROMETHEUS_ADAPTER_VERSION"],
            binaries={"prometheus-adapter": "sigs.k8s.io/prometheus-adapter/cmd/adapter"},
        ),
        Component(
            name="kubernetes",
            module="k8s.io/kubernetes",
            version=kube,
            binaries={
                name: kube_cmd + name
                for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
            },
            # Staging modules are published as v0.<minor>.<patch> of each release.
            sibling_version="v0." + kube.lstrip("v").split(".", 1)[1],
            stamps={
                "k8s.io/component-base/version.gitVersion": kube,
                "k8s.io/component-base/version.gitMajor": major,
                "k8s.io/component-base/version.gitMinor": minor,
                "k8s.io/component-base/version.gitTreeState": "clean",
            },
        ),
    ]


def built_component(name: str, versions: dict[str, str] | None = None) -> Component:
    """The pinned component that builds binary `name`; raises BuildError
    when it has not been built yet."""
    for candidate in components(versions):
        if name in candidate.binaries:
            if not candidate.is_built():
                raise BuildError(
                    f"{name} {candidate.version} is not built yet: run `make cluster-binaries`"
                )
            return candidate
    raise KeyError(name)


def binary(name: str, versions: dict[str, str] | None = None) -> Path:
    """Path of a cached binary; raises BuildError when it has not been built."""
    return built_component(name, versions).bin_dir / name


def _go_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CGO_ENABLED="0",  # static binaries, no C toolchain needed, faster builds
        GOTOOLCHAIN="local",  # never fetch another Go toolchain
        GOWORK="off",
        GOFLAGS="-mod=mod -trimpath -buildvcs=false",
    )
    env["PWD"] = str(workdir)
    return env


def _go_command() -> str:
    """`go` from PATH, else the official install location (a non-login
    shell, as CI's may be, can lack /usr/local/go/bin on PATH)."""
    return shutil.which("go") or "/usr/local/go/bin/go"


def _go(args: list[str], workdir: Path, capture: bool = False) -> str:
    """Runs one go command; streams its output unless captured."""
    try:
        done = subprocess.run(
            [_go_command(), *args],
            cwd=workdir,
            env=_go_env(workdir),
            check=False,
            text=True,
            stdout=subprocess.PIPE if capture else None,
        )
    except FileNotFoundError as exc:
        raise BuildError("the `go` command was not found; install Go >= 1.26") from exc
    if done.returncode != 0:
        raise BuildError(f"`go {' '.join(args)}` failed with exit code {done.returncode}")
    return done.stdout or ""


def replacements(upstream_gomod: dict[str, Any], component: Component) -> list[str]:
    """`go mod edit` flags that stand a published release in for each module
    the upstream go.mod (as `go mod edit -json` prints it) replaces with a
    relative path; replacements of modules it does not require (etcd's
    FORBIDDEN_DEPENDENCY guards) are left out."""
    required = {req["Path"] for req in upstream_gomod.get("Require") or []}
    edits = []
    for rep in upstream_gomod.get("Replace") or []:
        old, new = rep["Old"]["Path"], rep["New"]
        if old not in required:
            continue
        if new.get("Version"):
            edits.append(f"-replace={old}={new['Path']}@{new['Version']}")
        else:
            edits.append(f"-replace={old}={old}@{component.sibling_version or component.version}")
    return edits


def _write_wrapper(component: Component, workdir: Path) -> None:
    """Writes go.mod of a module that requires the upstream one with its
    relative replacements turned into published versions."""
    _go(["mod", "init", f"pagoda.local/build/{component.name}"], workdir, capture=True)
    _go(["mod", "edit", f"-require={component.module}@{component.version}"], workdir)
    info = json.loads(
        _go(["mod", "download", "-json", f"{component.module}@{component.version}"], workdir, capture=True)
    )
    upstream = json.loads(_go(["mod", "edit", "-json", info["GoMod"]], workdir, capture=True))
    edits = replacements(upstream, component)
    if edits:
        _go(["mod", "edit", *edits], workdir)


def build(component: Component) -> Path:
    """Builds one component into the cache (atomically) and returns its bin dir."""
    if component.is_built():
        return component.bin_dir
    component.directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{component.name}-", dir=component.directory.parent))
    try:
        src, out = staging / "src", staging / "bin"
        src.mkdir()
        out.mkdir()
        _write_wrapper(component, src)
        ldflags = " ".join(["-s", "-w", *(f"-X {k}={v}" for k, v in component.stamps.items())])
        # One package at a time: the Go build cache shares the compiled
        # dependencies, and only one link (the memory-heavy step) runs at once.
        for name, package in component.binaries.items():
            started = time.monotonic()
            print(f"cluster-binaries: building {name} {component.version} ...", file=sys.stderr, flush=True)
            _go(["build", f"-ldflags={ldflags}", "-o", str(out / name), package], src)
            print(f"cluster-binaries: built {name} in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
        if component.assets:
            module_dir = Path(_go(["list", "-m", "-f", "{{.Dir}}", component.module], src, capture=True).strip())
            for name, source in component.assets.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(module_dir / source, staging / name)
        shutil.rmtree(component.directory, ignore_errors=True)
        staging.rename(component.directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return component.bin_dir


def ensure_built(versions: dict[str, str] | None = None) -> list[Path]:
    """Builds every missing component, one at a time; returns the bin dirs."""
    return [build(component) for component in components(versions)]


def main() -> int:
    # Builds share the machine with editors and tests: yield the CPU to them.
    os.nice(10)
    try:
        for bin_dir in ensure_built():
            print(bin_dir)
    except BuildError as exc:
        print(f"cluster-binaries: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
