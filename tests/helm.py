"""helm for the chart tests: built once from its Go module into .cache/gobin (as grpcurl is), rendered manifests
parsed and checked against the Kubernetes OpenAPI schemas offline (kubernetes-validate).

The build is guarded by a file lock: the suite runs test files in two processes (pytest-xdist), and only one of them
builds while the other waits for the binary. A build that fails fails the test with go's own words, never a skip.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "wallaby"
GOBIN = ROOT / ".cache" / "gobin"

HELM_MODULE = "helm.sh/helm/v3/cmd/helm"
HELM_VERSION = "v3.21.4"
# The Kubernetes version manifests are rendered for (helm's .Capabilities) and validated against: the newest whose
# schemas kubernetes-validate 1.37.0 ships.
KUBE_VERSION = "1.37.0"
# A cold build downloads the module graph and compiles helm: about 4.5 minutes on a busy 2-core machine.
BUILD_TIMEOUT = 1500


class HelmError(Exception):
    """helm could not be built, or a helm command failed (its output is the message)."""


def _go() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if found is None:
        raise HelmError("no Go toolchain (go on PATH or /usr/local/go/bin/go) to build helm from " + HELM_MODULE)
    return found


def helm_binary() -> Path:
    """The helm of version HELM_VERSION in .cache/gobin, built there if missing (one builder at a time)."""
    target = GOBIN / f"helm-{HELM_VERSION}"
    if target.exists():
        return target
    GOBIN.mkdir(parents=True, exist_ok=True)
    with open(GOBIN / f".helm-{HELM_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other process waits here while this one builds
        if target.exists():
            return target
        build = GOBIN / f".helm-build-{os.getpid()}"
        build.mkdir(exist_ok=True)
        env = dict(os.environ, GOBIN=str(build), GOFLAGS="-mod=mod -buildvcs=false", CGO_ENABLED="0")
        try:
            out = subprocess.run([_go(), "install", f"{HELM_MODULE}@{HELM_VERSION}"], env=env, capture_output=True,
                                 text=True, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            shutil.rmtree(build, ignore_errors=True)
            raise HelmError(f"building helm {HELM_VERSION} took over {BUILD_TIMEOUT}s") from None
        built = build / "helm"
        if out.returncode != 0 or not built.exists():
            shutil.rmtree(build, ignore_errors=True)
            raise HelmError(f"could not build helm {HELM_VERSION} (go install {HELM_MODULE}): {out.stderr[-3000:]}")
        built.replace(target)  # atomic: a reader never sees half a binary
        shutil.rmtree(build, ignore_errors=True)
    return target


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``helm args...`` with a private home (no user repositories or plugins), output captured as text."""
    home = ROOT / ".cache" / "helm-home"
    env = dict(os.environ, HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
               HELM_DATA_HOME=str(home / "data"))
    out = subprocess.run([str(helm_binary()), *args], env=env, capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} exited {out.returncode}:\n{out.stderr}{out.stdout}")
    return out


def values_args(values: list[Path | str] | None = None, sets: list[str] | None = None) -> list[str]:
    args: list[str] = []
    for path in values or ():
        args += ["-f", str(path)]
    for item in sets or ():
        args += ["--set", item]
    return args


def lint(values: list[Path | str] | None = None, sets: list[str] | None = None) -> subprocess.CompletedProcess:
    return run_helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, *values_args(values, sets))


def template(values: list[Path | str] | None = None, sets: list[str] | None = None, release: str = "wallaby",
             namespace: str = "cdc") -> list[dict]:
    """The manifests ``helm template`` renders, parsed (empty documents dropped)."""
    out = run_helm("template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
                   *values_args(values, sets))
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def validate(manifest: dict) -> None:
    """Check one manifest against the Kubernetes OpenAPI schema of KUBE_VERSION, strictly (unknown fields are
    errors). Raises kubernetes_validate's ValidationError."""
    import kubernetes_validate

    kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


def by_kind(manifests: list[dict], kind: str) -> list[dict]:
    return [m for m in manifests if m.get("kind") == kind]


def one(manifests: list[dict], kind: str, name: str | None = None) -> dict:
    found = [m for m in by_kind(manifests, kind) if name is None or m["metadata"]["name"] == name]
    if len(found) != 1:
        names = [m["metadata"]["name"] for m in by_kind(manifests, kind)]
        raise AssertionError(f"expected one {kind} {name or ''}, rendered: {names}")
    return found[0]


def pod_spec(workload: dict) -> dict:
    """The pod spec of a Deployment, StatefulSet, Job or CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def env_of(container: dict) -> dict[str, dict]:
    """A container's env by name (each name must appear once)."""
    names = [e["name"] for e in container.get("env", [])]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise AssertionError(f"container {container['name']}: env names twice: {dupes}")
    return {e["name"]: e for e in container.get("env", [])}
