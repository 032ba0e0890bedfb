"""The Helm chart (charts/wallaby) and the Dockerfile it runs.

helm is built from its Go module into .cache/gobin (tests/helm.py); every values file is linted and rendered, and
every rendered manifest is checked against the Kubernetes OpenAPI schemas offline (kubernetes-validate, strict).
The multi-process worker is checked with bytewax's own code: bytewax.run derives its process id and addresses from
the rendered environment and hostfile, and the rendered init script makes each pod's recovery partition.
No image can be pulled here, so the Dockerfile is read, not built.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests import helm
from tests.helm import CHART, ROOT, by_kind, env_of, one, pod_spec

# The first test builds helm (tests/helm.py): a cold build takes minutes, more than pytest's default timeout.
pytestmark = pytest.mark.timeout(helm.BUILD_TIMEOUT + 300)

EXAMPLE = CHART / "values.example.yaml"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
VALUES_FILES = {"default": [], "example": [EXAMPLE], "all-features": [ALL_FEATURES]}

# USAGE.md "Kubernetes / Helm", as the user contract shows it.
USAGE_WORKERS = """
workers:
  enabled: true
  items:
    - name: flow-a
      kind: deployment
      replicas: 1
      command: ["/usr/local/bin/wallaby-worker"]
      args: ["--flow-id=flow-a"]
"""

# Kubernetes job dispatch (issue 17): Jobs created, followed and deleted; pods and their logs read. Nothing more.
DISPATCH_RULES = [
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    try:
        return helm.helm_binary()
    except helm.HelmError as exc:
        pytest.fail(str(exc), pytrace=False)


@cache
def rendered(name: str) -> tuple[dict, ...]:
    return tuple(helm.template(VALUES_FILES[name]))


def render(helm_bin, tmp_path, values: str, *, extra: list[Path] | None = None) -> list[dict]:
    path = tmp_path / "values.yaml"
    path.write_text(values)
    return helm.template([*(extra or []), path])


def workloads(manifests) -> list[dict]:
    return [m for m in manifests if m["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob")]


@pytest.mark.parametrize("name", list(VALUES_FILES))
def test_lint_and_render_validate(helm_bin, name):
    """helm lint --strict passes, and every manifest helm template renders is a valid object of Kubernetes 1.37."""
    helm.lint(VALUES_FILES[name])
    manifests = rendered(name)
    assert manifests
    problems = []
    for manifest in manifests:
        try:
            helm.validate(manifest)
        except Exception as exc:  # kubernetes_validate's ValidationError and friends: list them all
            problems.append(f"{manifest['kind']} {manifest['metadata']['name']}: {exc}")
    assert not problems, "\n".join(problems)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    if name == "all-features":
        assert {"ConfigMap", "Job", "CronJob", "StatefulSet", "PersistentVolumeClaim"} <= kinds


def test_usage_md_workers_render_as_shown(helm_bin, tmp_path):
    """USAGE.md's workers example renders one Deployment with exactly its command and args, and the values file it
    links exists."""
    assert EXAMPLE.is_file()
    manifests = render(helm_bin, tmp_path, USAGE_WORKERS)
    worker = one(manifests, "Deployment", "wallaby-flow-a")
    assert worker["spec"]["replicas"] == 1
    container = pod_spec(worker)["containers"][0]
    assert container["command"] == ["/usr/local/bin/wallaby-worker"]
    assert container["args"] == ["--flow-id=flow-a"]
    for manifest in manifests:
        helm.validate(manifest)


def test_rbac_gives_job_dispatch_exactly_its_verbs(helm_bin):
    manifests = rendered("default")
    role = one(manifests, "Role")
    assert role["rules"] == DISPATCH_RULES
    assert not by_kind(manifests, "ClusterRole") and not by_kind(manifests, "ClusterRoleBinding")
    binding = one(manifests, "RoleBinding")
    account = one(manifests, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "cdc"}]
    api = pod_spec(one(manifests, "Deployment"))
    assert api["serviceAccountName"] == account["metadata"]["name"]
    assert api["automountServiceAccountToken"] is True  # the dispatcher calls the API server with it
    # every worker runs without a token
    for workload in workloads(rendered("all-features")):
        if workload["metadata"]["labels"]["app.kubernetes.io/component"] == "worker":
            assert pod_spec(workload)["automountServiceAccountToken"] is False, workload["metadata"]["name"]
    # rbac.create=false and serviceAccount.create=false: none of them
    off = helm.template(sets=["rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops"])
    assert not by_kind(off, "Role") and not by_kind(off, "RoleBinding") and not by_kind(off, "ServiceAccount")
    assert pod_spec(one(off, "Deployment"))["serviceAccountName"] == "ops"


@pytest.mark.parametrize("name", list(VALUES_FILES))
def test_every_pod_runs_non_root_read_only(helm_bin, name):
    for workload in workloads(rendered(name)):
        spec = pod_spec(workload)
        where = f"{workload['kind']} {workload['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001 and pod["fsGroup"] == 10001, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert "privileged" not in ctx or ctx["privileged"] is False, where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in tmp_volumes, f"{where}/{container['name']}: no writable /tmp"
            assert container["resources"].get("limits", {}).get("memory"), f"{where}/{container['name']}"


def test_api_server_probes_port_and_service(helm_bin):
    manifests = rendered("default")
    api = one(manifests, "Deployment")
    container = pod_spec(api)["containers"][0]
    assert container["command"] == ["wallaby"]
    assert container["ports"] == [{"name": "grpc", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        # grpc.health.v1.Health answers "" SERVING without a token (wallaby/control/api/server.py)
        assert container[probe]["grpc"] == {"port": 8080, "service": ""}
    env = env_of(container)
    assert env["WALLABY_GRPC_LISTEN"]["value"] == ":8080"
    service = one(manifests, "Service")
    assert service["spec"]["ports"] == [{"name": "grpc", "port": 8080, "targetPort": "grpc", "protocol": "TCP",
                                         "appProtocol": "grpc"}]
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]

    # all-features: its own port, the user's WALLABY_GRPC_LISTEN kept once, TLS (the kubelet's gRPC probe cannot
    # speak TLS: TCP probes), a PVC for the data dir
    manifests = rendered("all-features")
    api = one(manifests, "Deployment", "wallaby-all")
    spec = pod_spec(api)
    container = spec["containers"][0]
    env = env_of(container)
    assert env["WALLABY_GRPC_LISTEN"]["value"] == "0.0.0.0:9090"
    assert env["WALLABY_GRPC_TLS_CERT"]["value"] == "/etc/wallaby/tls/tls.crt"
    assert env["WALLABY_API_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "wallaby-api-token", "key": "api-token"}}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "grpc"} and "grpc" not in container[probe]
    assert container["livenessProbe"]["initialDelaySeconds"] == 20
    assert container["args"] == ["--reflection=true"]
    assert {"name": "tls", "secret": {"secretName": "wallaby-grpc-tls"}} in spec["volumes"]
    data = next(v for v in spec["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "wallaby-all-data"}}
    pvc = one(manifests, "PersistentVolumeClaim", "wallaby-all-data")
    assert pvc["spec"]["storageClassName"] == "fast-ssd" and pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert api["spec"]["strategy"] == {"type": "Recreate"}
    assert one(manifests, "Service", "wallaby-all")["spec"]["type"] == "LoadBalancer"


def test_api_token_secret(helm_bin):
    """No token given: the chart makes one (the server refuses a pod address without auth); existingSecret is used
    as is; insecure=true opens the API and makes no Secret."""
    manifests = rendered("default")
    secret = one(manifests, "Secret", "wallaby-api-token")
    assert len(base64.b64decode(secret["data"]["token"])) == 48
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    env = env_of(pod_spec(one(manifests, "Deployment"))["containers"][0])
    assert env["WALLABY_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "wallaby-api-token", "key": "token"}
    assert "WALLABY_API_INSECURE" not in env

    example = rendered("example")
    assert not by_kind(example, "Secret")
    env = env_of(pod_spec(one(example, "Deployment", "wallaby"))["containers"][0])
    assert env["WALLABY_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "wallaby-api-token"

    insecure = helm.template(sets=["api.auth.insecure=true"])
    assert not by_kind(insecure, "Secret")
    env = env_of(pod_spec(one(insecure, "Deployment"))["containers"][0])
    assert env["WALLABY_API_INSECURE"]["value"] == "true" and "WALLABY_API_TOKEN" not in env


def test_config_map_and_env_reach_every_pod(helm_bin):
    manifests = rendered("all-features")
    config = one(manifests, "ConfigMap", "wallaby-all-config")
    assert config["data"] == {"WALLABY_WIRE_FORMAT": "arrow", "WALLABY_WIRE_ENFORCE": "true",
                              "WALLABY_DDL_POLL": "5s", "WALLABY_EPOCH_INTERVAL": "2",
                              "WALLABY_K8S_JOB_SERVICE_ACCOUNT": "wallaby-dispatcher"}
    for workload in workloads(manifests):
        spec = pod_spec(workload)
        container = spec["containers"][0]
        where = workload["metadata"]["name"]
        assert container["envFrom"][:3] == [
            {"configMapRef": {"name": "wallaby-all-config"}},
            {"secretRef": {"name": "wallaby-secrets"}},
            {"configMapRef": {"name": "wallaby-extra", "optional": True}},
        ], where
        env = env_of(container)
        assert env["WALLABY_POSTGRES_DSN"]["valueFrom"] == {"secretKeyRef": {"name": "wallaby-db", "key": "dsn"}}
        template = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
        assert template["template"]["metadata"]["annotations"]["checksum/config"], where
    orders = pod_spec(one(manifests, "Deployment", "wallaby-all-orders"))["containers"][0]
    assert orders["envFrom"][3:] == [{"secretRef": {"name": "orders-destinations"}}]
    assert env_of(orders)["WALLABY_LOG_LEVEL"]["value"] == "info"  # the item's env wins over the global one
    # config.enabled=false (the default): no ConfigMap, no reference to one
    default = rendered("default")
    assert not by_kind(default, "ConfigMap")
    assert "envFrom" not in pod_spec(one(default, "Deployment"))["containers"][0]


def test_worker_kinds(helm_bin):
    manifests = rendered("all-features")
    workers = {w["metadata"]["name"]: w for w in workloads(manifests)
               if w["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"}
    assert {name: w["kind"] for name, w in workers.items()} == {
        "wallaby-all-orders": "Deployment", "wallaby-all-paused-flow": "Deployment",
        "wallaby-all-catch-up-once": "Job", "wallaby-all-hourly-sync": "CronJob", "wallaby-all-events": "StatefulSet"}

    orders = workers["wallaby-all-orders"]
    assert orders["spec"]["replicas"] == 1 and orders["spec"]["strategy"] == {"type": "Recreate"}
    container = pod_spec(orders)["containers"][0]
    assert container["command"] == ["/usr/local/bin/wallaby-worker"] and container["args"] == ["--flow-id=orders"]
    assert container["resources"]["limits"]["memory"] == "4Gi"
    assert pod_spec(orders)["terminationGracePeriodSeconds"] == 120
    assert one(manifests, "PersistentVolumeClaim", "wallaby-all-orders-data")["spec"]["resources"] == {
        "requests": {"storage": "10Gi"}}

    paused = workers["wallaby-all-paused-flow"]
    assert paused["spec"]["replicas"] == 0  # 0 is kept, not replaced by a default
    assert pod_spec(paused)["containers"][0]["command"] == ["wallaby-worker"]  # the default command
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "paused-flow-data"}} in pod_spec(paused)["volumes"]

    job = workers["wallaby-all-catch-up-once"]
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["ttlSecondsAfterFinished"] == 600
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert pod_spec(job)["containers"][0]["args"] == ["-flow-id", "orders-archive", "-max-empty-reads", "1"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    # wallaby-worker's exit statuses: 1 permanent, 2 bad spec, 3 fenced fail the Job; 75 (transient) is retried
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In",
                                                            "values": [1, 2, 3]}}

    cron = workers["wallaby-all-hourly-sync"]
    assert cron["spec"]["schedule"] == "0 * * * *" and cron["spec"]["timeZone"] == "Europe/Paris"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    assert cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"] == job["spec"]["podFailurePolicy"]
    assert pod_spec(cron)["containers"][0]["args"] == ["--flow-id=hourly-sync", "--max-empty-reads=1"]

    # the example: a streaming worker and a nightly backfill
    example = {w["metadata"]["name"]: w for w in workloads(rendered("example"))}
    assert example["wallaby-orders"]["kind"] == "Deployment"
    nightly = example["wallaby-orders-warehouse-nightly"]
    assert nightly["kind"] == "CronJob" and nightly["spec"]["schedule"] == "30 2 * * *"
    assert "--mode=backfill" in pod_spec(nightly)["containers"][0]["args"]
    # workers.enabled=false (the default): none
    assert [w["metadata"]["name"] for w in workloads(rendered("default"))] == ["wallaby"]


def test_long_worker_names_stay_apart_and_valid(helm_bin):
    base = "workers.items[{}]."
    sets = ["fullnameOverride=a-rather-long-release-name-for-wallaby", "workers.enabled=true"]
    for i, kind in enumerate(("cronjob", "statefulset")):
        sets += [base.format(i) + f"name=nightly-reload-of-the-orders-warehouse-{i}", base.format(i) + f"kind={kind}"]
    sets.append(base.format(0) + "schedule=@daily")
    manifests = helm.template(sets=sets)
    names = [w["metadata"]["name"] for w in workloads(manifests) if w["kind"] != "Deployment"]
    assert len(set(names)) == 2 and all(len(name) <= 52 for name in names), names
    for manifest in manifests:
        helm.validate(manifest)


def statefulset_parts(manifests, name="wallaby-all-events"):
    sts = one(manifests, "StatefulSet", name)
    service = one(manifests, "Service", name)
    hostfile = one(manifests, "ConfigMap", f"{name}-hostfile")["data"]["hostfile.txt"]
    return sts, service, hostfile


def test_statefulset_follows_bytewax_cluster_conventions(helm_bin):
    sts, service, hostfile = statefulset_parts(rendered("all-features"))
    spec = sts["spec"]
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"][0]["port"] == 2101
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert hostfile.splitlines() == [f"wallaby-all-events-{i}.wallaby-all-events.cdc.svc.cluster.example:2101"
                                     for i in range(3)]

    # one recovery volume per pod: a volumeClaimTemplate, never a claim every pod mounts
    pod = spec["template"]["spec"]
    claims = spec["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["recovery"]
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claims[0]["spec"]["storageClassName"] == "fast-ssd"
    assert "recovery" not in {v["name"] for v in pod["volumes"]}
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])

    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "bytewax.run", "dataflows.flow:flow"]
    assert container["ports"] == [{"name": "bytewax", "containerPort": 2101, "protocol": "TCP"}]
    env = env_of(container)
    assert env["BYTEWAX_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["BYTEWAX_STATEFULSET_NAME"]["value"] == sts["metadata"]["name"]
    assert env["BYTEWAX_PROCESSES_COUNT"]["value"] == "3"
    assert env["BYTEWAX_WORKERS_PER_PROCESS"]["value"] == "1"  # one worker per process (DESIGN.md "Scaling")
    assert env["WALLABY_FLOW_FILE"]["value"] == "/etc/wallaby/flow/flow.json"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[env["BYTEWAX_RECOVERY_DIRECTORY"]["value"]] == "recovery"
    assert mounts[os.path.dirname(env["BYTEWAX_HOSTFILE_PATH"]["value"])] == "hostfile"
    assert mounts["/etc/wallaby/flow"] == "flow"
    assert {"name": "hostfile", "configMap": {"name": "wallaby-all-events-hostfile"}} in pod["volumes"]
    init = pod["initContainers"][0]
    assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]}[env["BYTEWAX_RECOVERY_DIRECTORY"]["value"]] \
        == "recovery"


BYTEWAX_ARGS = """
import json, sys
from bytewax import run
sys.argv = ["bytewax.run", "dataflows.flow:flow"]
args = run._parse_args()
print(json.dumps({"process_id": args.process_id, "addresses": args.addresses,
                  "workers": args.workers_per_process, "recovery": str(args.recovery_directory),
                  "snapshot": args.snapshot_interval.total_seconds(), "backup": args.backup_interval.total_seconds()}))
"""


def pod_env(container: dict, pod_name: str, hostfile: Path, recovery: Path) -> dict[str, str]:
    """A container's environment as the kubelet would set it for ``pod_name`` (mounts moved under tmp)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYTEWAX_")}
    for name, var in env_of(container).items():
        if "valueFrom" in var:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}} or name.startswith("WALLABY_")
            if "fieldRef" in var["valueFrom"]:
                env[name] = pod_name
        else:
            env[name] = var["value"]
    env["BYTEWAX_HOSTFILE_PATH"] = str(hostfile)
    env["BYTEWAX_RECOVERY_DIRECTORY"] = str(recovery)
    return env


def test_bytewax_reads_process_id_and_addresses_from_the_rendered_pods(helm_bin, tmp_path):
    """bytewax.run's own argument handling, given each pod's rendered environment and hostfile, finds the pod's
    ordinal as its process id, every process's address and the recovery settings; the rendered init script makes
    the pod's own recovery partition once."""
    import json

    sts, _, hostfile_text = statefulset_parts(rendered("all-features"))
    pod = sts["spec"]["template"]["spec"]
    hostfile = tmp_path / "hostfile.txt"
    hostfile.write_text(hostfile_text)
    init = pod["initContainers"][0]
    assert init["command"][:2] == ["python", "-c"]
    expected = ";".join(hostfile_text.split())
    for ordinal in range(sts["spec"]["replicas"]):
        pod_name = f"{sts['metadata']['name']}-{ordinal}"
        recovery = tmp_path / pod_name
        recovery.mkdir()
        for _ in range(2):  # a restarted pod keeps its partition
            made = subprocess.run([sys.executable, "-c", init["command"][2]], capture_output=True, text=True,
                                  env=pod_env(init, pod_name, hostfile, recovery), timeout=120)
            assert made.returncode == 0, made.stderr
        assert sorted(p.name for p in recovery.iterdir()) == [f"part-{ordinal}.sqlite3"]
        out = subprocess.run([sys.executable, "-c", BYTEWAX_ARGS], capture_output=True, text=True, timeout=120,
                             env=pod_env(pod["containers"][0], pod_name, hostfile, recovery), cwd=ROOT)
        assert out.returncode == 0, out.stderr
        args = json.loads(out.stdout)
        assert args == {"process_id": ordinal, "addresses": expected, "workers": 1, "recovery": str(recovery),
                        "snapshot": 5.0, "backup": 60.0}


CLUSTER_FLOW = """
import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

flow = Dataflow("chart_cluster")
keyed = op.key_on("key", op.input("in", flow, TestingSource(range(12))), lambda x: str(x % 3))
op.output("out", op.stateful_map("sum", keyed, lambda total, x: ((total or 0) + x, (total or 0) + x)), StdOutSink())
"""


def test_rendered_statefulset_runs_a_bytewax_cluster_with_a_partition_per_pod(helm_bin, tmp_path):
    """The rendered pods' environment, with each pod's own recovery partition (as the init container makes it) and
    the hostfile pointing at this machine, run a real two-process bytewax cluster that resumes from its recovery
    stores (bytewax 0.21.1 finds the partitions spread over the processes)."""
    import socket

    manifests = helm.template(sets=["workers.enabled=true", "workers.items[0].name=pair",
                                    "workers.items[0].kind=statefulset", "workers.items[0].processes=2"])
    sts = one(manifests, "StatefulSet", "wallaby-pair")
    pod = sts["spec"]["template"]["spec"]
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    hostfile = tmp_path / "hostfile.txt"
    hostfile.write_text("".join(f"127.0.0.1:{port}\n" for port in ports))
    (tmp_path / "chart_cluster.py").write_text(CLUSTER_FLOW)

    def run_cluster() -> list[str]:
        procs = []
        for ordinal in range(2):
            env = pod_env(pod["containers"][0], f"wallaby-pair-{ordinal}", hostfile, tmp_path / f"rec-{ordinal}")
            env["PYTHONPATH"] = str(tmp_path)
            procs.append(subprocess.Popen([sys.executable, "-m", "bytewax.run", "chart_cluster:flow"], env=env,
                                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err[-2000:]
        return sorted(line for out, _ in outs for line in out.splitlines() if line.startswith("("))

    for ordinal in range(2):
        recovery = tmp_path / f"rec-{ordinal}"
        recovery.mkdir()
        made = subprocess.run([sys.executable, "-c", pod["initContainers"][0]["command"][2]], capture_output=True,
                              text=True, timeout=120,
                              env=pod_env(pod["initContainers"][0], f"wallaby-pair-{ordinal}", hostfile, recovery))
        assert made.returncode == 0, made.stderr
    first = run_cluster()
    assert len(first) == 12 and "('2', 2)" in first  # every item once, across both processes
    assert run_cluster() == []  # resumed from the recovery partitions: nothing read again


@pytest.mark.parametrize("name", list(VALUES_FILES))
def test_notes(helm_bin, tmp_path, name):
    """NOTES.txt renders (helm template leaves it out: a copy of the chart renders it as a value) and says how to
    reach the API with its token, what RBAC allows and which workers run."""
    import shutil

    chart = tmp_path / "wallaby"
    shutil.copytree(CHART, chart)
    notes = chart / "templates" / "NOTES.txt"
    (chart / "templates" / "_notes.tpl").write_text('{{- define "test.notes" -}}' + notes.read_text() + "{{- end -}}")
    notes.unlink()
    (chart / "templates" / "notes.yaml").write_text('notes: {{ include "test.notes" . | toJson }}\n')
    out = helm.run_helm("template", "wallaby", str(chart), "--namespace", "cdc", "--show-only", "templates/notes.yaml",
                        *helm.values_args(VALUES_FILES[name]))
    text = yaml.safe_load(out.stdout)["notes"]
    assert "<no value>" not in text and "%!" not in text, text
    assert "kubectl -n cdc port-forward svc/" in text
    assert "export WALLABY_API_TOKEN=" in text and "get secret wallaby-api-token" in text
    assert "create/get/list/watch/delete" in text
    if name != "default":
        assert "Workers:" in text
    if name == "all-features":
        assert "-tls flow list" in text and "wallaby-all-events (statefulset, 3 bytewax processes)" in text


@pytest.mark.parametrize(("values", "expected"), [
    ("api:\n  port: grpc\n", "/api/port"),
    ("api:\n  replicas: 2\n", "/api/replicas"),
    ("config:\n  enabled: \"yes\"\n", "/config/enabled"),
    ("env:\n  WALLABY_LOG_LEVEL: debug\n", "/env"),
    ("workers:\n  enabled: true\n  items:\n    - name: a\n      kind: daemonset\n", "/workers/items/0/kind"),
    ("workers:\n  enabled: true\n  items:\n    - name: a\n      kind: cronjob\n", "schedule"),
    ("workers:\n  enabled: true\n  items:\n    - name: a\n      kind: deployment\n      replicas: \"1\"\n",
     "/workers/items/0/replicas"),
    ("workers:\n  enabled: true\n  items:\n    - name: Flow_A\n      kind: job\n", "/workers/items/0/name"),
    ("workers:\n  enabled: true\n  items:\n    - name: a\n      kind: statefulset\n      processes: 0\n",
     "/workers/items/0/processes"),
    ("workers:\n  enabled: true\n  items:\n    - name: a\n      kind: job\n      command: wallaby-worker\n",
     "/workers/items/0/command"),
    ("replicaCount: 2\n", "replicaCount"),
])
def test_schema_refuses_wrong_values(helm_bin, tmp_path, values, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(values)
    out = helm.run_helm("template", "wallaby", str(CHART), "--kube-version", helm.KUBE_VERSION, "-f", str(path),
                        check=False)
    assert out.returncode != 0, out.stdout[:500]
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr
    assert expected in out.stderr, out.stderr


def test_values_documented_in_chart_readme():
    """Every leaf of values.yaml and every worker item field of the schema is named in charts/wallaby/README.md."""
    readme = (CHART / "README.md").read_text()

    opaque = {"resources", "podSecurityContext", "securityContext", "liveness", "readiness"}  # Kubernetes objects

    def leaves(node, prefix=""):
        if isinstance(node, dict) and node and prefix.rpartition(".")[2] not in opaque:
            for key, value in node.items():
                yield from leaves(value, f"{prefix}.{key}" if prefix else key)
        else:
            yield prefix

    missing = [key for key in leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
               if f"`{key}`" not in readme]
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    item = schema["properties"]["workers"]["properties"]["items"]["items"]["properties"]
    missing += [f"workers.items[].{key}" for key in item if f"`workers.items[].{key}`" not in readme]
    assert not missing, f"not in charts/wallaby/README.md: {missing}"


# ---- the Dockerfile (no base image can be pulled here: read, not built) ----

def dockerfile_stages() -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """The Dockerfile's global ARG defaults and its stages, each a list of (INSTRUCTION, arguments)."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # continuation lines
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stages.append([])
        if not stages:
            if word == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                args[key.strip()] = value.strip()
            continue
        stages[-1].append((word, rest.strip()))
    return args, stages


def test_dockerfile_lint():
    args, stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder and a final stage"

    def base(stage):
        image = stage[0][1].split()[0]
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)

    builder, final = stages[0], stages[-1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base(final)), base(final)  # pinned 3.11 patch release
    assert base(builder) == base(final)  # the venv's python is the final image's
    assert re.search(r"\bAS\s+builder\b", builder[0][1], re.I)
    final_text = "\n".join(f"{w} {r}" for w, r in final)
    everything = "\n".join(f"{w} {r}" for stage in stages for w, r in stage)

    # the builder installs the project's wheel into a venv; the final stage copies only that venv
    assert re.search(r"python -m venv (\S+)", "\n".join(r for _, r in builder))
    assert re.search(r"pip wheel .*--wheel-dir", everything) and re.search(r"pip install \S*\.whl", everything)
    assert any(w == "COPY" and r.startswith("--from=builder") for w, r in final)
    copied = {r.split()[0] for w, r in builder if w == "COPY"}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in packages["include"]:
        name = pattern.rstrip("*")
        assert name in copied, f"the builder does not copy {name}/"
        assert (ROOT / name).is_dir()

    # non-root: the last USER of the final stage is a fixed non-zero UID (the chart's runAsUser)
    users = [r for w, r in final if w == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == 10001, users[-1]
    assert "--uid 10001" in final_text
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)

    # the three console scripts on PATH (and where USAGE.md's chart example runs them)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"wallaby", "wallaby-worker", "wallaby-admin"}
    for script in scripts:
        assert f"/usr/local/bin/{script}" in final_text, script
    assert re.search(r"ENV .*PATH=/opt/wallaby/bin:", final_text)
    cmd = [r for w, r in final if w in ("CMD", "ENTRYPOINT")]
    assert cmd and yaml.safe_load(cmd[-1]) == ["wallaby"]
    assert [r for w, r in final if w == "EXPOSE"] == [str(values["api"]["port"])]

    # nothing fetched by ADD, no secret baked in
    assert not any(w == "ADD" for stage in stages for w, _ in stage), "use COPY (ADD of a URL or archive)"
    for stage in stages:
        for word, rest in stage:
            if word in ("ENV", "ARG"):
                assert not re.search(r"(PASSWORD|TOKEN|SECRET|_KEY|DSN)\w*\s*=", rest, re.I), rest

    # the chart's default image is this Dockerfile's, at the project's version
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version and values["image"]["tag"] == ""
    assert f"{values['image']['repository']}:<version>" in (ROOT / "Dockerfile").read_text()

    # .dockerignore keeps the context small and secret-free, and keeps what the wheel needs
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".cache", "tests", "data"} <= ignored
    assert not ({"pyproject.toml", "README.md", *(p.rstrip("*") for p in packages["include"])} & ignored)
