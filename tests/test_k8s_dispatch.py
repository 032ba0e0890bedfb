"""Kubernetes job dispatch (wallaby/control/api/kubernetes.py) against tests/k8sserver.py: an HTTPS Kubernetes API
server checking bearer and mTLS auth and the OpenAPI schema of every Job, whose kubelet runs each Job's worker as a
real local process. The flow lifecycle goes through a real ``wallaby`` API server with ``WALLABY_K8S_ENABLED=true``,
real workers, Postgres and DuckDB."""

from __future__ import annotations

import base64
import json
import logging
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import kubernetes_validate
import psycopg
import pytest

from tests import SERVER
from tests.apiserver import ROOT, current_lsn, duck_rows, flow_file, make_server, pg_rows, server_env, wait_streaming
from tests.k8sserver import KubeAPI, config_map, secret
from wallaby.control.api import kubernetes as kubernetes_dispatch
from wallaby.control.api.dispatch import WorkerExit
from wallaby.control.api.kubernetes import KubernetesDispatcher, KubernetesError, job_name
from wallaby.core import settings
from wallaby.core.errors import EXIT_CONFIG
from wallaby.v1 import flow_pb2, types_pb2

NS = "cdc"
IMAGE = "ghcr.io/josephjohncox/wallaby:0.1.0"


@pytest.fixture
def kube(tmp_path):
    api = KubeAPI(tmp_path).start()
    yield api
    api.close()


def k8s_env(kube: KubeAPI, *, auth: str = "token", **extra: str) -> dict[str, str]:
    env = {"WALLABY_K8S_ENABLED": "true", "WALLABY_K8S_JOB_IMAGE": IMAGE, "WALLABY_K8S_NAMESPACE": NS,
           "WALLABY_K8S_API_SERVER": kube.url, "WALLABY_K8S_CA_FILE": str(kube.certs.ca),
           "WALLABY_K8S_JOB_SERVICE_ACCOUNT": "wallaby",
           "WALLABY_K8S_JOB_ENV_FROM": "secret:wallaby-secrets,configmap:wallaby-config",
           "WALLABY_K8S_JOB_LABELS": "team=data,tier=cdc", "WALLABY_K8S_JOB_ANNOTATIONS": "owner=data@example.com"}
    if auth == "token":
        env["WALLABY_K8S_TOKEN"] = kube.token
    elif auth == "mtls":
        env.update(WALLABY_K8S_CLIENT_CERT=str(kube.certs.client_cert),
                   WALLABY_K8S_CLIENT_KEY=str(kube.certs.client_key))
    env.update(extra)
    return env


def dispatcher(env: dict[str, str], exits: list | None = None) -> KubernetesDispatcher:
    return KubernetesDispatcher((exits if exits is not None else []).append, settings.load(env), env,
                                poll_interval=0.2)


def container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


# -- the Job ----------------------------------------------------------------------------------------------


def test_job_content_is_what_the_settings_say_and_schema_valid(tmp_path):
    kube = KubeAPI(tmp_path, run_pods=False).start()  # the Jobs only: no kubelet
    try:
        env = k8s_env(kube, WALLABY_K8S_JOB_ARGS="-epoch-interval,1s", WALLABY_K8S_JOB_COMMAND="wallaby-worker,--",
                      WALLABY_POSTGRES_DSN="postgresql://u@db/store", WALLABY_EPOCH_INTERVAL="1s",
                      WALLABY_GRPC_LISTEN=":8080", WALLABY_API_TOKEN="api-secret", WALLABY_WORKER_STOP_TIMEOUT="45")
        d = dispatcher(env)
        try:
            d.launch("orders", 7)
            d.launch("Orders_Big.flow", 2, once=True)
            d.launch("bf", 3, backfill=["public.a", "public.b"])
            jobs = {j["metadata"]["name"]: j for j in kube.created}
            assert set(jobs) == {"wallaby-orders-7", job_name("Orders_Big.flow", 2), "wallaby-bf-3"}
            job = jobs["wallaby-orders-7"]
            meta = job["metadata"]
            assert meta["namespace"] == NS
            assert meta["labels"] == {"team": "data", "tier": "cdc", "app.kubernetes.io/name": "wallaby",
                                      "app.kubernetes.io/component": "worker", "wallaby.io/flow": "orders",
                                      "wallaby.io/generation": "7", "wallaby.io/run": "stream"}
            assert meta["annotations"] == {"owner": "data@example.com", "wallaby.io/flow-id": "orders"}
            assert job["spec"]["template"]["metadata"]["labels"] == meta["labels"]
            assert job["spec"]["backoffLimit"] == 0
            pod = job["spec"]["template"]["spec"]
            assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "wallaby"
            assert pod["terminationGracePeriodSeconds"] == 45  # WALLABY_WORKER_STOP_TIMEOUT: SIGTERM, then SIGKILL
            c = container(job)
            assert c["image"] == IMAGE and c["command"] == ["wallaby-worker", "--"]
            assert c["args"] == ["-flow-id", "orders", "-generation", "7", "-epoch-interval", "1s"]
            assert c["envFrom"] == [{"secretRef": {"name": "wallaby-secrets"}},
                                    {"configMapRef": {"name": "wallaby-config"}}]
            # the server's settings a worker needs; not its listener, token, dispatch or worker-management settings
            assert {e["name"]: e["value"] for e in c["env"]} == {"WALLABY_POSTGRES_DSN": "postgresql://u@db/store",
                                                                  "WALLABY_EPOCH_INTERVAL": "1s"}
            once = jobs[job_name("Orders_Big.flow", 2)]
            assert once["metadata"]["annotations"]["wallaby.io/flow-id"] == "Orders_Big.flow"
            assert container(once)["args"] == ["-flow-id", "Orders_Big.flow", "-generation", "2",
                                               "-max-empty-reads", "1", "-epoch-interval", "1s"]
            assert container(jobs["wallaby-bf-3"])["args"] == [
                "-flow-id", "bf", "-generation", "3", "-mode", "backfill", "-tables", "public.a,public.b",
                "-epoch-interval", "1s"]
            for j in kube.created:  # the server validated them too (else 422)
                kubernetes_validate.validate(j, "1.37.0", strict=True)
            assert d.running("orders").generation == 7
        finally:
            d.close(5)
        assert sorted(kube.deletes) == sorted((n, "Foreground") for n in jobs)

        # WALLABY_K8S_JOB_MAX_EMPTY_READS: every Job stops once caught up
        d = dispatcher(k8s_env(kube, WALLABY_K8S_JOB_MAX_EMPTY_READS="5"))
        try:
            d.launch("orders", 8)
            d.launch("orders2", 1, once=True)
            assert container(kube.created[-2])["args"] == ["-flow-id", "orders", "-generation", "8",
                                                           "-max-empty-reads", "5"]
            assert container(kube.created[-1])["args"][-2:] == ["-max-empty-reads", "5"]
        finally:
            d.close(5)

        # What the server refuses is one error naming it and the server (here: a name too long for a Job, 422)
        d = dispatcher(k8s_env(kube))
        try:
            original = d.manifest

            def too_long(*args, **kwargs) -> dict:
                body = original(*args, **kwargs)
                body["metadata"]["name"] = "x" * 70
                return body

            d.manifest = too_long
            with pytest.raises(KubernetesError) as err:
                d.launch("x", 1)
            assert str(err.value).startswith(f"Kubernetes API server {kube.url}: create Job {'x' * 70} in namespace"
                                             f" cdc: 422 Unprocessable Entity: Job.batch \"{'x' * 70}\" is invalid:")
        finally:
            d.close(5)
        # and a Job that is not schema-valid is refused as the real API server refuses it
        body = json.loads(json.dumps(kube.created[0]))
        body["metadata"]["name"] = "other"
        container(body)["bogus"] = 1
        request = urllib.request.Request(f"{kube.url}/apis/batch/v1/namespaces/{NS}/jobs", json.dumps(body).encode(),
                                         {"Authorization": f"Bearer {kube.token}",
                                          "Content-Type": "application/json"}, method="POST")
        context = ssl.create_default_context(cafile=str(kube.certs.ca))
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, context=context, timeout=10)
        answer = json.loads(err.value.read())
        assert err.value.code == 422 and answer["kind"] == "Status" and answer["reason"] == "Invalid"
        assert "'bogus' was unexpected" in answer["message"]
    finally:
        kube.close()


def test_a_restarted_server_takes_over_the_running_jobs(tmp_path):
    """Jobs an earlier run of the server left running (it was killed) are watched again, and superseded: the next
    generation's launch stops the older Job first (its worker would hold the slot)."""
    kube = KubeAPI(tmp_path, run_pods=False).start()
    try:
        first = dispatcher(k8s_env(kube))
        first.launch("orders", 4)
        first._closed.set()  # killed: no stop of its Jobs
        exits: list[WorkerExit] = []
        second = dispatcher(k8s_env(kube), exits)
        try:
            assert second.running("orders").generation == 4 and second.running("orders").name == "wallaby-orders-4"
            second.launch("orders", 5)
            assert exits == [WorkerExit("orders", 4, False, 0, "worker stopped", True)]
            assert [j["metadata"]["name"] for j in kube.jobs(NS)] == ["wallaby-orders-5"]
            assert kube.deletes == [("wallaby-orders-4", "Foreground")]
        finally:
            second.close(5)
    finally:
        kube.close()


def test_bearer_and_mtls_auth_and_clear_errors(tmp_path, caplog, monkeypatch):
    kube = KubeAPI(tmp_path, run_pods=False).start()
    try:
        for auth in ("token", "mtls"):
            kube.users.clear()
            dispatcher(k8s_env(kube, auth=auth)).close(5)
            assert kube.users == ["token" if auth == "token" else "wallaby-dispatcher"]
        # the CA as data (base64, as in a kubeconfig), client certificate and key as PEM text
        env = k8s_env(kube, auth="none", WALLABY_K8S_CA_FILE="",
                      WALLABY_K8S_CA_DATA=base64.b64encode(kube.certs.ca.read_bytes()).decode(),
                      WALLABY_K8S_CLIENT_CERT=kube.certs.client_cert.read_text(),
                      WALLABY_K8S_CLIENT_KEY=kube.certs.client_key.read_text())
        dispatcher(env).close(5)

        def refused(env: dict[str, str]) -> str:
            with pytest.raises(KubernetesError) as err:
                dispatcher(env)
            text = str(err.value)
            assert "\n" not in text and kube.url in text
            return text

        wrong = refused(k8s_env(kube, WALLABY_K8S_TOKEN="not-the-token-42"))
        assert "401" in wrong and "WALLABY_K8S_TOKEN" in wrong and "not-the-token-42" not in wrong
        assert "401" in refused(k8s_env(kube, auth="none"))  # no credentials
        rogue = refused(k8s_env(kube, auth="mtls", WALLABY_K8S_CLIENT_CERT=str(kube.certs.rogue_cert),
                                WALLABY_K8S_CLIENT_KEY=str(kube.certs.rogue_key)))  # a certificate of another CA
        assert "cannot reach" in rogue or "401" in rogue, rogue
        untrusted = refused(k8s_env(kube, WALLABY_K8S_CA_FILE=""))  # the server's CA is not the system's
        assert "cannot reach" in untrusted and "CERTIFICATE_VERIFY_FAILED" in untrusted and kube.token not in untrusted
        with caplog.at_level(logging.WARNING, logger="wallaby.api.kubernetes"):
            dispatcher(k8s_env(kube, WALLABY_K8S_CA_FILE="", WALLABY_K8S_INSECURE_SKIP_TLS="true")).close(5)
        assert any("WALLABY_K8S_INSECURE_SKIP_TLS" in r.getMessage() for r in caplog.records)
        # in-cluster: the service account's token, CA and namespace, the API server from KUBERNETES_SERVICE_*
        account = tmp_path / "serviceaccount"
        account.mkdir()
        (account / "token").write_text(kube.token)
        (account / "ca.crt").write_bytes(kube.certs.ca.read_bytes())
        (account / "namespace").write_text("wallaby-ns\n")
        monkeypatch.setattr(kubernetes_dispatch, "SERVICE_ACCOUNT_DIR", account)
        kube.users.clear()
        d = dispatcher({"WALLABY_K8S_ENABLED": "true", "WALLABY_K8S_JOB_IMAGE": IMAGE,
                        "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(kube.port)})
        assert d.namespace == "wallaby-ns" and d.host == kube.url and kube.users == ["token"]
        d.close(5)
        # a kubeconfig and its context
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "other",
            "clusters": [{"name": "test", "cluster": {"server": kube.url,
                                                      "certificate-authority": str(kube.certs.ca)}}],
            "users": [{"name": "bot", "user": {"token": kube.token}}],
            "contexts": [{"name": "other", "context": {"cluster": "test", "user": "nobody"}},
                         {"name": "test", "context": {"cluster": "test", "user": "bot", "namespace": "ops"}}]}))
        env = {"WALLABY_K8S_ENABLED": "true", "WALLABY_K8S_JOB_IMAGE": IMAGE,
               "WALLABY_K8S_KUBECONFIG": str(kubeconfig), "WALLABY_K8S_CONTEXT": "test"}
        d = dispatcher(env)
        assert d.namespace == "ops" and d.host == kube.url
        d.close(5)
    finally:
        kube.close()


def test_job_ends_are_reported_with_status_and_reason(tmp_path, kube):
    """The watcher reports each Job's end through on_exit: exit status from the container (128+N -> -N), reason from
    the termination message; a catch-up run (WALLABY_K8S_JOB_MAX_EMPTY_READS) that ends by itself is a one-off's end;
    a Job deleted behind wallaby's back is a death."""

    def py(code: str) -> str:  # the container's command: WALLABY_K8S_JOB_COMMAND is a comma list
        assert "," not in code
        return f"{sys.executable},-c,{code}"

    exits: list[WorkerExit] = []

    def ended(n: int) -> list[WorkerExit]:
        return _wait(f"{n} reports", lambda: len(exits) >= n and exits, timeout=30)

    d = dispatcher(k8s_env(kube, WALLABY_K8S_JOB_ENV_FROM="", WALLABY_K8S_JOB_MAX_EMPTY_READS="3",
                           WALLABY_K8S_JOB_COMMAND=py("import sys;sys.exit(0)")), exits)
    try:
        d.launch("caught-up", 1)
        assert ended(1)[0] == WorkerExit("caught-up", 1, True, 0, "worker finished", False)
        assert d.running("caught-up") is None
    finally:
        d.close(5)
    exits.clear()
    cases = {"perm": ("import sys;print('wallaby-worker: destination duck: no such bucket');"
                      "print('- tables: x');sys.exit(1)"),
             "busy": "import sys;print('wallaby-worker: source away');sys.exit(75)",
             "abort": "import os;import sys;sys.stdout.write('about to abort');sys.stdout.flush();os.abort()",
             "sleepy": "import time;time.sleep(60)"}
    runs = []
    for flow_id, code in cases.items():  # a namespace each: a dispatcher takes over the running Jobs of its own
        d = dispatcher(k8s_env(kube, WALLABY_K8S_JOB_ENV_FROM="", WALLABY_K8S_JOB_COMMAND=py(code),
                               WALLABY_K8S_NAMESPACE=flow_id), exits)
        runs.append(d)
        d.launch(flow_id, 1)
    # a pod that cannot start (its envFrom Secret is missing: CreateContainerConfigError) fails the run
    d = KubernetesDispatcher(exits.append, settings.load(env := k8s_env(kube, WALLABY_K8S_JOB_ENV_FROM="secret:nope")),
                             env, poll_interval=0.2, stuck_after=0.5)
    runs.append(d)
    d.launch("stuck", 1)
    try:
        _wait("the pod of sleepy", lambda: kube.pods_of("wallaby-sleepy-1"))
        kube._delete_job("sleepy", "wallaby-sleepy-1", "Background")  # kubectl delete job, behind wallaby's back
        got = {e.flow_id: e for e in ended(5)}
        assert got["stuck"] == WorkerExit("stuck", 1, False, 1, "the worker's pod cannot start: pod"
                                          f" {kube.pods_of('wallaby-stuck-1')[0].name}: CreateContainerConfigError:"
                                          ' secret "nope" not found', False)
        assert ("wallaby-stuck-1", "Background") in kube.deletes
        assert got["perm"] == WorkerExit("perm", 1, False, 1, "destination duck: no such bucket tables: x", False)
        assert got["busy"] == WorkerExit("busy", 1, False, 75, "source away", False)
        assert got["abort"].returncode == -signal.SIGABRT and not got["abort"].once
        assert got["abort"].reason.startswith("worker killed by signal 6 (exit code 134): about to abort")
        assert got["sleepy"].returncode < 0 and "deleted outside wallaby" in got["sleepy"].reason
    finally:
        for d in runs:
            d.close(5)


def test_bad_settings_are_refused_at_server_start(tmp_path, kube):
    def start(**extra: str) -> subprocess.CompletedProcess:
        env = server_env(tmp_path, **extra)
        return subprocess.run([*SERVER], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)

    out = start(WALLABY_K8S_ENABLED="sure", WALLABY_K8S_NAMESPACE="Bad_NS", WALLABY_K8S_JOB_LABELS="team",
                WALLABY_K8S_CLIENT_CERT="/etc/cert.pem")
    assert out.returncode == EXIT_CONFIG, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    for var in ("WALLABY_K8S_ENABLED", "WALLABY_K8S_NAMESPACE", "WALLABY_K8S_JOB_LABELS", "WALLABY_K8S_CLIENT_KEY"):
        assert var in line, line
    assert "Traceback" not in out.stderr

    out = start(**k8s_env(kube, WALLABY_K8S_JOB_IMAGE=""))
    assert out.returncode == EXIT_CONFIG and out.stderr.strip().splitlines()[-1].startswith(
        "wallaby: WALLABY_K8S_JOB_IMAGE: required with WALLABY_K8S_ENABLED=true"), out.stderr

    out = start(**k8s_env(kube, WALLABY_K8S_TOKEN="wrong-token-xyz"))
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"wallaby: Kubernetes API server {kube.url}: list Jobs in namespace {NS}: 401 Unauthorized: Unauthorized"
        " (check WALLABY_K8S_TOKEN or the client certificate)")
    assert "wrong-token-xyz" not in out.stderr and "Traceback" not in out.stderr


# -- the flow lifecycle through the API server -------------------------------------------------------------


def _write(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql)


def _wait(what, check, timeout: float = 90, interval: float = 0.3, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s\n{log()}")


def test_flow_lifecycle_with_job_dispatch(tmp_path, pgdb, kube):
    """create+start -> a Job runs a real worker streaming into DuckDB; its container killed -> restarted
    (give_up_policy) as a new Job; pause / stop delete the Job gracefully (SIGTERM, exit 0); resume creates the next
    generation's Job; RunFlowOnce runs a Job with -max-empty-reads that ends by itself; a flow that cannot run ends
    FAILED with the worker's reason from the pod."""
    _write(pgdb, "CREATE TABLE orders (id int PRIMARY KEY, note text)")
    # envFrom: the source DSN only the Secret holds (the flow says ${env:SOURCE_DSN}), the ConfigMap a tuning
    kube.put("secrets", NS, secret("wallaby-secrets", {"SOURCE_DSN": pgdb}))
    kube.put("configmaps", NS, config_map("wallaby-config", {"WALLABY_SOURCE_BATCH_BYTES": "1MiB"}))
    duck = tmp_path / "orders.duckdb"
    # the API server resolves ${env:SOURCE_DSN} too (its checks at create); a Job's worker has it from the Secret
    # only: the dispatcher passes WALLABY_* settings alone
    server = make_server(tmp_path, **k8s_env(kube), WALLABY_WORKER_MAX_RESTARTS="2",
                         WALLABY_WORKER_STOP_TIMEOUT="30", SOURCE_DSN=pgdb)
    server.start()

    def logs() -> str:
        return f"server log:\n{server.log_path.read_text()[-3000:]}\npods:\n{kube.pod_log()}"

    def state(flow_id: str):
        return server.get(flow_id)

    def active_job(flow_id: str) -> dict | None:
        jobs = [j for j in kube.jobs(NS) if j["metadata"]["labels"]["wallaby.io/flow"] == flow_id
                and not j["status"].get("succeeded") and not j["status"].get("failed")]
        return jobs[-1] if len(jobs) == 1 else None

    try:
        path = flow_file(tmp_path, "${env:SOURCE_DSN}", "orders", duck=duck)
        server.admin("flow", "create", "-file", str(path), "-start")
        job = _wait("the first Job", lambda: active_job("orders"), log=logs)
        assert job["metadata"]["name"] == "wallaby-orders-1"
        assert container(job)["args"] == ["-flow-id", "orders", "-generation", "1"]
        wait_streaming(pgdb, "orders_slot", timeout=90)
        _write(pgdb, "INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 200) g")
        server.wait_checkpoint("orders", current_lsn(pgdb), timeout=90)

        # The container dies (signal 9, exit code 137): a transient death, restarted as the next generation's Job.
        [pod] = kube.pods_of("wallaby-orders-1")
        kube.kill_container(pod, signal.SIGKILL)
        _wait("the restart", lambda: state("orders").generation == 2 and active_job("orders"), log=logs)
        flow = state("orders")
        assert flow.state == types_pb2.FLOW_STATE_RUNNING and "killed by signal 9" in flow.state_reason
        assert pod.exit_code == 137
        wait_streaming(pgdb, "orders_slot", timeout=90)
        _write(pgdb, "UPDATE orders SET note = 'u' WHERE id <= 20")
        server.wait_checkpoint("orders", current_lsn(pgdb), timeout=90)

        # Pause: the Job is deleted (Foreground), the worker gets SIGTERM and ends its epoch: exit 0.
        out = server.admin_json("flow", "pause", "-flow-id", "orders")
        assert out["state"] == "FLOW_STATE_PAUSED"
        [pod] = kube.pods_of("wallaby-orders-2")
        assert pod.exit_code == 0 and ("wallaby-orders-2", "Foreground") in kube.deletes
        assert "wallaby-orders-2" not in [j["metadata"]["name"] for j in kube.jobs(NS)]  # gone when pause returned
        assert duck_rows(duck) == pg_rows(pgdb)

        _write(pgdb, "DELETE FROM orders WHERE id > 190")
        server.admin("flow", "resume", "-flow-id", "orders")
        assert state("orders").generation == 3
        _wait("the resumed Job", lambda: active_job("orders"), log=logs)
        server.wait_checkpoint("orders", current_lsn(pgdb), timeout=90)
        server.admin("flow", "stop", "-flow-id", "orders")
        assert state("orders").state == types_pb2.FLOW_STATE_STOPPED
        [pod] = kube.pods_of("wallaby-orders-3")
        assert pod.exit_code == 0
        assert duck_rows(duck) == pg_rows(pgdb)

        # RunFlowOnce: a Job that stops by itself once caught up; the flow stays stopped.
        _write(pgdb, "INSERT INTO orders VALUES (500, 'once')")
        lsn = current_lsn(pgdb)
        assert server.flows.RunFlowOnce(flow_pb2.RunFlowOnceRequest(flow_id="orders"), timeout=30).dispatched
        once = _wait("the run-once Job", lambda: [j for j in kube.jobs(NS) if j["metadata"]["name"] ==
                                                  "wallaby-orders-4"], log=logs)[0]
        assert container(once)["args"] == ["-flow-id", "orders", "-generation", "4", "-max-empty-reads", "1"]
        _wait("the run-once Job's end", lambda: [j for j in kube.jobs(NS) if j["metadata"]["name"] ==
                                                 "wallaby-orders-4" and j["status"].get("succeeded")], log=logs)
        server.wait_checkpoint("orders", lsn, timeout=30)
        assert (500, "once") in duck_rows(duck)
        assert state("orders").state == types_pb2.FLOW_STATE_STOPPED

        # A flow whose table does not exist: the worker exits 1, the flow FAILS with its reason, never restarted.
        bad = flow_file(tmp_path, "${env:SOURCE_DSN}", "bad", duck=tmp_path / "bad.duckdb", tables="public.missing")
        server.admin("flow", "create", "-file", str(bad), "-start")
        failed = _wait("the bad flow's failure", lambda: (f := state("bad")).state == types_pb2.FLOW_STATE_FAILED
                       and f, log=logs)
        assert "public.missing" in failed.state_reason and failed.generation == 1, failed.state_reason
        [pod] = kube.pods_of("wallaby-bad-1")
        assert pod.exit_code == 1

        # Every Job the server sent was schema-valid (the test server answers 422 otherwise) and the server did
        # not leave one running.
        assert [j["metadata"]["name"] for j in kube.created] == [
            "wallaby-orders-1", "wallaby-orders-2", "wallaby-orders-3", "wallaby-orders-4", "wallaby-bad-1"]
        assert not [j for j in kube.jobs(NS) if not j["status"].get("succeeded") and not j["status"].get("failed")]
    finally:
        server.stop()
    assert isinstance(WorkerExit, type)


# -- the Go build's WALLABY_K8S_JOB_* settings (issue 19) ------------------------------------------------------


def test_go_job_settings_shape_the_job(tmp_path):
    """WALLABY_K8S_JOB_NAME_PREFIX, _IMAGE_PULL_POLICY, _TTL_SECONDS, _ENV and _BACKOFF_LIMIT=0 as the Go build
    means them, in Jobs the server takes (OpenAPI-valid)."""
    kube = KubeAPI(tmp_path, run_pods=False).start()
    try:
        env = k8s_env(kube, WALLABY_K8S_JOB_NAME_PREFIX="cdc-worker", WALLABY_K8S_JOB_IMAGE_PULL_POLICY="never",
                      WALLABY_K8S_JOB_TTL_SECONDS="600", WALLABY_K8S_JOB_BACKOFF_LIMIT="0",
                      WALLABY_K8S_JOB_ENV="TZ=UTC,WALLABY_EPOCH_INTERVAL=5s,EMPTY=",
                      WALLABY_POSTGRES_DSN="postgresql://u@db/store", WALLABY_EPOCH_INTERVAL="1s")
        d = dispatcher(env)
        try:
            d.launch("orders", 7)
            d.launch("Orders_Big.flow", 2, once=True)
        finally:
            d.close(5)
        jobs = {j["metadata"]["name"]: j for j in kube.created}
        assert set(jobs) == {"cdc-worker-orders-7", job_name("Orders_Big.flow", 2, "cdc-worker")}
        assert all(len(n) <= 63 for n in jobs)
        job = jobs["cdc-worker-orders-7"]
        assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] == 600
        c = container(job)
        assert c["imagePullPolicy"] == "Never"
        # JOB_ENV is added to the server's settings, and wins over them for a name in both
        assert {e["name"]: e["value"] for e in c["env"]} == {
            "WALLABY_POSTGRES_DSN": "postgresql://u@db/store", "WALLABY_EPOCH_INTERVAL": "5s", "TZ": "UTC",
            "EMPTY": ""}
        for j in kube.created:
            kubernetes_validate.validate(j, "1.37.0", strict=True)
        assert d.running("orders") is None  # closed: its Jobs were deleted

        # defaults: Jobs named wallaby-..., an hour's TTL, the pull policy left to Kubernetes; TTL 0: no TTL
        kube.created.clear()
        d = dispatcher(k8s_env(kube, WALLABY_K8S_JOB_TTL_SECONDS="0"))
        try:
            d.launch("orders", 8)
        finally:
            d.close(5)
        [job] = kube.created
        assert job["metadata"]["name"] == "wallaby-orders-8" and "ttlSecondsAfterFinished" not in job["spec"]
        assert "imagePullPolicy" not in container(job)
        kube.created.clear()
        d = dispatcher(k8s_env(kube))
        try:
            d.launch("orders", 9)
        finally:
            d.close(5)
        assert kube.created[0]["spec"]["ttlSecondsAfterFinished"] == 3600
    finally:
        kube.close()


def test_job_env_reaches_the_worker(tmp_path, kube):
    """WALLABY_K8S_JOB_ENV is in the worker's process environment (through the kubelet), over the server's."""
    exits: list[WorkerExit] = []
    code = ("import os;import sys;print('wallaby-worker: '+os.environ['WHO']+' '"
            "+os.environ['WALLABY_EPOCH_INTERVAL']);sys.exit(1)")
    d = dispatcher(k8s_env(kube, WALLABY_K8S_JOB_ENV_FROM="", WALLABY_K8S_JOB_COMMAND=f"{sys.executable},-c,{code}",
                           WALLABY_K8S_JOB_ENV="WHO=go-env,WALLABY_EPOCH_INTERVAL=9s", WALLABY_EPOCH_INTERVAL="1s"),
                   exits)
    try:
        d.launch("envy", 1)
        _wait("the Job's end", lambda: exits, timeout=30)
    finally:
        d.close(5)
    assert exits[0].returncode == 1 and exits[0].reason == "go-env 9s", exits


def test_go_job_settings_refused_at_server_start(tmp_path, kube):
    env = server_env(tmp_path, **k8s_env(kube, WALLABY_K8S_JOB_BACKOFF_LIMIT="2", WALLABY_K8S_JOB_TTL_SECONDS="10",
                                         WALLABY_K8S_JOB_IMAGE_PULL_POLICY="sometimes",
                                         WALLABY_K8S_JOB_NAME_PREFIX="x" * 41, WALLABY_K8S_JOB_ENV="1BAD=x"))
    out = subprocess.run([*SERVER], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == EXIT_CONFIG, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    for var, says in (("WALLABY_K8S_JOB_BACKOFF_LIMIT", "always have backoffLimit 0"),
                      ("WALLABY_K8S_JOB_TTL_SECONDS", "under 60 seconds"),
                      ("WALLABY_K8S_JOB_IMAGE_PULL_POLICY", "not an image pull policy"),
                      ("WALLABY_K8S_JOB_NAME_PREFIX", "longer than 40"),
                      ("WALLABY_K8S_JOB_ENV", "not an environment variable name")):
        assert f"{var}: " in line and says in line, (var, line)
    assert "Traceback" not in out.stderr
