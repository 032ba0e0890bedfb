"""Kubernetes job dispatch: one Job per flow run instead of a local worker process (``WALLABY_K8S_ENABLED=true``).

:class:`KubernetesDispatcher` has :class:`~wallaby.control.api.dispatch.LocalDispatcher`'s interface, so the
:class:`~wallaby.control.api.manager.FlowManager` runs flows the same way:

- ``launch`` creates a Job ``<prefix>-<flow>-<generation>`` (``WALLABY_K8S_JOB_NAME_PREFIX``, default ``wallaby``;
  ``backoffLimit: 0``, ``restartPolicy: Never``: the manager decides restarts, by the flow's ``give_up_policy``, so
  ``WALLABY_K8S_JOB_BACKOFF_LIMIT`` is refused unless 0; ``ttlSecondsAfterFinished``
  ``WALLABY_K8S_JOB_TTL_SECONDS``, default 3600, 0 for none; ``imagePullPolicy``
  ``WALLABY_K8S_JOB_IMAGE_PULL_POLICY`` when set) running ``WALLABY_K8S_JOB_COMMAND`` (default
  ``wallaby-worker``) ``-flow-id ID -generation N`` [``-max-empty-reads N``] [``-mode backfill -tables ...``]
  ``WALLABY_K8S_JOB_ARGS``, in ``WALLABY_K8S_JOB_IMAGE``, with the service account, ``envFrom``, labels and
  annotations of the ``WALLABY_K8S_JOB_*`` settings and the server's own ``WALLABY_*`` settings (flow store,
  checkpoints, tuning) with ``WALLABY_K8S_JOB_ENV`` (``NAME=value,...``, winning over them) as ``env``, so the
  worker opens the same flow store (as a local worker does by inheriting the server's environment);
- ``stop`` deletes the Job with ``propagationPolicy: Foreground``: the pod gets SIGTERM, finishes and checkpoints
  its epoch within ``terminationGracePeriodSeconds`` (``WALLABY_WORKER_STOP_TIMEOUT``), then SIGKILL; ``stop``
  returns when the Job is gone;
- a watcher thread polls the flow Jobs (label ``app.kubernetes.io/name=wallaby``) and reports each end through
  ``on_exit`` with the worker's exit status (the pod's container ``terminated.exitCode``; 128+N, a death by
  signal N, is reported as -N like a local process's) and its reason (the worker's ``wallaby-worker: ...`` line,
  from the container's termination message, ``FallbackToLogsOnError``, else from the tail of its log); a Job
  deleted by someone else is a death (restarted by ``give_up_policy``), a pod that cannot start (a missing
  Secret, a bad image: :data:`STUCK_REASONS` for two minutes) has its Job deleted and is a permanent failure with
  the kubelet's reason.

With ``WALLABY_K8S_JOB_MAX_EMPTY_READS`` every Job is a catch-up run: it ends by itself once caught up; that end
(status 0) leaves the flow as it is (RUNNING), a failure is handled by ``give_up_policy``. RunFlowOnce Jobs
always stop when caught up (``WALLABY_K8S_JOB_MAX_EMPTY_READS``, else ``WALLABY_RUN_ONCE_EMPTY_READS``).

The API server is found, in this order: ``WALLABY_K8S_API_SERVER`` (explicit), ``WALLABY_K8S_KUBECONFIG`` /
``WALLABY_K8S_CONTEXT``, in-cluster (the service account's token and CA, refreshed as they rotate), the default
kubeconfig (``$KUBECONFIG``, ``~/.kube/config``); ``WALLABY_K8S_TOKEN``, ``_CA_FILE`` / ``_CA_DATA``,
``_CLIENT_CERT`` / ``_CLIENT_KEY`` and ``_INSECURE_SKIP_TLS`` apply on top of any of them. The server is asked
once at start (listing the flow Jobs): a refusal or no answer stops the start with one line naming the server,
never the token. docs/kubernetes.md "Job dispatch".
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wallaby.control.api.dispatch import WorkerExit, worker_error
from wallaby.core import settings
from wallaby.core.errors import (
    EXIT_OK,
    EXIT_PERMANENT,
    ConfigError,
    FieldProblem,
    TerminalError,
    TransientError,
)

log = logging.getLogger("wallaby.api.kubernetes")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CONTAINER = "worker"
SELECTOR = "app.kubernetes.io/name=wallaby,app.kubernetes.io/component=worker"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set on a Job's pods by the Job controller
FLOW_ANNOTATION = "wallaby.io/flow-id"  # the exact flow id (the label may be shortened)
# ttlSecondsAfterFinished by default (WALLABY_K8S_JOB_TTL_SECONDS): an ended Job (and its pod's log) stays an hour
FINISHED_TTL = settings.Settings.k8s_job_ttl_seconds
# The server's settings a worker needs (the flow store, checkpoints, recovery, tuning, formats): every WALLABY_*
# but the server's own (its gRPC listener and auth, how it runs workers) and the dispatch settings themselves.
NOT_FOR_WORKERS = ("WALLABY_K8S_", "WALLABY_DBOS_", "WALLABY_GRPC_", "WALLABY_API_", "WALLABY_WORKER_")
CALL_TIMEOUT = (10, 30)  # connect, read (seconds)
# A container waiting for one of these longer than ``stuck_after`` (default 120 s) cannot start: its Job is deleted
# and the run ends as a permanent failure with the kubelet's reason (a missing Secret, a bad image), not RUNNING
# for ever with nothing running.
STUCK_REASONS = ("CreateContainerConfigError", "CreateContainerError", "InvalidImageName", "ErrImagePull",
                 "ImagePullBackOff")
STUCK_CHECK_INTERVAL = 10.0


class KubernetesError(OSError):
    """Talking to the Kubernetes API failed. An ``OSError``: a launch that fails leaves the flow FAILED with it
    (:meth:`FlowManager._launch`), as a local worker that cannot be started does."""


class KubernetesUnavailable(KubernetesError, TransientError):
    """No answer, or a 5xx / 429: retrying may help (gRPC UNAVAILABLE)."""


class KubernetesRefused(KubernetesError, TerminalError):
    """A 4xx answer: the credentials, permissions or the request are wrong (gRPC FAILED_PRECONDITION)."""


@dataclass
class JobRun:
    """A flow run's Job, as the dispatcher tracks it (``running()`` returns it: ``.generation``)."""

    flow_id: str
    generation: int
    once: bool  # run once or backfill: ends by itself
    name: str
    started_at: float
    catch_up: bool = False  # WALLABY_K8S_JOB_MAX_EMPTY_READS on a streaming run: ends by itself too
    stopping: bool = False


# -- names -------------------------------------------------------------------------------------------------


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def job_name(flow_id: str, generation: int, prefix: str = "wallaby") -> str:
    """``<prefix>-<flow>-<generation>`` (prefix ``WALLABY_K8S_JOB_NAME_PREFIX``, default ``wallaby``): a DNS-1123
    label (at most 63). A flow id that is not one already (capitals, ``_`` or ``.``, too long) is lowered, cut and
    given a hash of itself, so two flows never share a name."""
    suffix = f"-{generation}"
    base = re.sub(r"[^a-z0-9-]+", "-", flow_id.lower()).strip("-") or "flow"
    room = 63 - len(prefix) - 1 - len(suffix)
    if base != flow_id or len(base) > room:
        base = f"{base[:room - 7].rstrip('-')}-{_short_hash(flow_id)}".lstrip("-")
    return f"{prefix}-{base}{suffix}"


_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def label_value(flow_id: str) -> str:
    """The flow id as a label value (at most 63, alphanumeric at the ends), shortened with a hash if it is not."""
    if _LABEL_VALUE.fullmatch(flow_id):
        return flow_id
    return f"{flow_id[:50].rstrip('-_.')}-{_short_hash(flow_id)}"


def reason_from_log(text: str) -> str:
    """The worker's own error report in a pod's termination message or log (:func:`dispatch.worker_error`)."""
    return worker_error(text)


def worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """The server's settings a worker needs (see :data:`NOT_FOR_WORKERS`)."""
    return {k: v for k, v in sorted(env.items())
            if k.startswith("WALLABY_") and not k.startswith(NOT_FOR_WORKERS) and v.strip()}


# -- configuration -----------------------------------------------------------------------------------------


def _pem_file(value: str, var: str, temps: list[str]) -> str:
    """A PEM file's path for ``value``: itself, or a private temporary file holding the PEM text it is."""
    if value.lstrip().startswith("-----BEGIN"):
        fd, name = tempfile.mkstemp(prefix="wallaby-k8s-", suffix=".pem")
        with os.fdopen(fd, "w") as f:
            f.write(value.strip() + "\n")
        temps.append(name)
        return name
    path = os.path.expanduser(value)
    if not os.path.isfile(path):
        raise ConfigError("Kubernetes job dispatch", [FieldProblem(var, f"no such file: {value}")])
    return path


def _default_kubeconfig(env: Mapping[str, str]) -> str | None:
    for candidate in [*(env.get("KUBECONFIG") or "").split(os.pathsep), os.path.expanduser("~/.kube/config")]:
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def client_configuration(tuned: settings.Settings, env: Mapping[str, str]) -> tuple[Any, str, list[str]]:
    """``(kubernetes.client.Configuration, namespace, temporary files)`` from the ``WALLABY_K8S_*`` settings, or a
    :class:`ConfigError` naming the variable."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    what = "Kubernetes job dispatch"
    cfg = k8s.Configuration()
    temps: list[str] = []
    namespace = None
    in_cluster = bool(env.get("KUBERNETES_SERVICE_HOST")) and (SERVICE_ACCOUNT_DIR / "token").is_file()
    kubeconfig = tuned.k8s_kubeconfig
    if kubeconfig and not os.path.isfile(os.path.expanduser(kubeconfig)):
        raise ConfigError(what, [FieldProblem("WALLABY_K8S_KUBECONFIG", f"no such file: {kubeconfig}")])
    if tuned.k8s_api_server:
        cfg.host = tuned.k8s_api_server
    elif kubeconfig or tuned.k8s_context or (not in_cluster and _default_kubeconfig(env)):
        path = os.path.expanduser(kubeconfig) if kubeconfig else _default_kubeconfig(env)
        var = "WALLABY_K8S_CONTEXT" if tuned.k8s_context else "WALLABY_K8S_KUBECONFIG"
        if path is None:
            raise ConfigError(what, [FieldProblem(var, "no kubeconfig found (set WALLABY_K8S_KUBECONFIG, or"
                                                       " $KUBECONFIG, or ~/.kube/config)")])
        try:
            k8s_config.load_kube_config(config_file=path, context=tuned.k8s_context, client_configuration=cfg,
                                        persist_config=False)
            contexts, active = k8s_config.list_kube_config_contexts(config_file=path)
        except Exception as exc:  # ConfigException, a YAML error, a missing key
            raise ConfigError(what, [FieldProblem(var, f"cannot use kubeconfig {path}: {exc}")]) from None
        chosen = next((c for c in contexts if c.get("name") == tuned.k8s_context), active) if contexts else None
        namespace = ((chosen or {}).get("context") or {}).get("namespace")
    elif in_cluster:
        from kubernetes.config.incluster_config import InClusterConfigLoader

        try:  # load_incluster_config(), with the paths of this module (tests point them elsewhere)
            InClusterConfigLoader(token_filename=str(SERVICE_ACCOUNT_DIR / "token"),
                                  cert_filename=str(SERVICE_ACCOUNT_DIR / "ca.crt"), try_refresh_token=True,
                                  environ=dict(env)).load_and_set(cfg)
        except Exception as exc:
            raise ConfigError(what, [FieldProblem("WALLABY_K8S_API_SERVER", f"in-cluster configuration: {exc}")]
                              ) from None
        try:
            namespace = (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or None
        except OSError:
            pass
    else:
        raise ConfigError(what, [FieldProblem("WALLABY_K8S_API_SERVER", (
            "no Kubernetes API server to talk to: not running in a cluster (no service account token in"
            f" {SERVICE_ACCOUNT_DIR}), no kubeconfig (WALLABY_K8S_KUBECONFIG, $KUBECONFIG, ~/.kube/config); set"
            " WALLABY_K8S_API_SERVER with WALLABY_K8S_TOKEN or a client certificate"))])
    if tuned.k8s_token:
        cfg.api_key = {"BearerToken": f"Bearer {tuned.k8s_token}"}
        cfg.api_key_prefix = {}
        cfg.refresh_api_key_hook = None  # not the in-cluster token's refresh
    if tuned.k8s_ca_file:
        cfg.ssl_ca_cert = _pem_file(tuned.k8s_ca_file, "WALLABY_K8S_CA_FILE", temps)
    elif tuned.k8s_ca_data:
        cfg.ssl_ca_cert = _pem_file(tuned.k8s_ca_data, "WALLABY_K8S_CA_DATA", temps)
    if tuned.k8s_client_cert and tuned.k8s_client_key:
        cfg.cert_file = _pem_file(tuned.k8s_client_cert, "WALLABY_K8S_CLIENT_CERT", temps)
        cfg.key_file = _pem_file(tuned.k8s_client_key, "WALLABY_K8S_CLIENT_KEY", temps)
    if tuned.k8s_insecure_skip_tls:
        cfg.verify_ssl = False
        import urllib3

        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        log.warning("WALLABY_K8S_INSECURE_SKIP_TLS=true: the Kubernetes API server's certificate (%s) is not"
                    " verified; anyone on the path can read the credentials sent to it", cfg.host)
    cfg.retries = 1
    return cfg, tuned.k8s_namespace or namespace or "default", temps


# -- the dispatcher ------------------------------------------------------------------------------------------


def _finished(job: dict) -> bool:
    status = job.get("status") or {}
    if status.get("succeeded") or status.get("failed"):
        return True
    return any(c.get("status") == "True" and c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet",
                                                                 "FailureTarget")
               for c in status.get("conditions") or ())


def _terminated(pod: dict) -> dict | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or ():
        if cs.get("name") == CONTAINER and (cs.get("state") or {}).get("terminated"):
            return cs["state"]["terminated"]
    return None


def _returncode(code: int) -> int:
    """A container's exit code as a local process's return code: 128+N (killed by signal N) -> -N."""
    return -(code - 128) if 128 < code < 128 + 65 else code


class KubernetesDispatcher:
    """Runs flow workers as Kubernetes Jobs and watches them (the interface of ``LocalDispatcher``)."""

    def __init__(self, on_exit: Callable[[WorkerExit], None], tuned: settings.Settings | None = None,
                 env: Mapping[str, str] | None = None, poll_interval: float = 1.0, stuck_after: float = 120.0):
        from kubernetes import client as k8s

        self.on_exit = on_exit
        self.env = dict(os.environ if env is None else env)
        self.tuned = tuned or settings.load(self.env)
        self.stop_timeout = self.tuned.worker_stop_timeout
        # empty reads of a run-once Job without WALLABY_K8S_JOB_MAX_EMPTY_READS (DBOS sets its own: scheduling.py)
        self.run_once_empty_reads = self.tuned.run_once_empty_reads
        self.poll_interval = poll_interval
        self.stuck_after = stuck_after
        cfg, self.namespace, self._temps = client_configuration(self.tuned, self.env)
        self.host = cfg.host
        self._api = k8s.ApiClient(configuration=cfg)
        self._batch = k8s.BatchV1Api(self._api)
        self._core = k8s.CoreV1Api(self._api)
        self._runs: dict[str, JobRun] = {}  # Job name -> run
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._last_watch_error = ""
        self._last_stuck_check = 0.0
        # One call at start: the server answers and lets us list Jobs (else one line naming it); the active flow
        # Jobs of an earlier run of this server are taken over (watched, stopped, superseded).
        try:
            jobs = self._list_jobs()
        except KubernetesError:
            self._release()
            raise
        for job in jobs:
            if not _finished(job) and not (job.get("metadata") or {}).get("deletionTimestamp"):
                self._adopt(job)
        log.info("Kubernetes job dispatch: API server %s, namespace %s, image %s%s", self.host, self.namespace,
                 self.tuned.k8s_job_image, f" ({len(self._runs)} running Job(s) taken over)" if self._runs else "")
        self._watcher = threading.Thread(target=self._watch, name="wallaby-k8s-dispatch", daemon=True)
        self._watcher.start()

    # -- the API, with one kind of error ------------------------------------------------------------
    def _call(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        import urllib3
        from kubernetes.client.rest import ApiException

        try:
            resp = fn(*args, _request_timeout=CALL_TIMEOUT, _preload_content=False, **kwargs)
            data = resp.data
            return json.loads(data) if data and "json" in (resp.headers.get("content-type") or "") else data
        except ApiException as exc:
            if not exc.status:  # the client's own: a TLS failure
                raise self._unreachable(what, str(exc.reason or exc)) from None
            raise self._refusal(exc, what) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # MaxRetryError, a timeout, a socket error
            cause = getattr(exc, "reason", None) or exc
            raise self._unreachable(what, f"{type(cause).__name__}: {cause}") from None

    def _unreachable(self, what: str, why: str) -> KubernetesUnavailable:
        why = re.sub(r"\s*\n\s*", ": ", why.strip())[:400]
        return KubernetesUnavailable(f"cannot reach the Kubernetes API server {self.host} ({what}): {why}")

    def _refusal(self, exc: Any, what: str) -> KubernetesError:
        message = ""
        try:
            message = json.loads(exc.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            pass
        status = exc.status or 0
        hint = ""
        if status == 401:
            hint = " (check WALLABY_K8S_TOKEN or the client certificate)"
        elif status == 403:
            hint = (f" (the service account needs create/get/list/watch/delete on Jobs and get/list on Pods and"
                    f" pods/log in namespace {self.namespace})")
        cls = KubernetesUnavailable if status >= 500 or status in (0, 429) else KubernetesRefused
        err = cls(f"Kubernetes API server {self.host}: {what}: {status} {exc.reason or ''}"
                  f"{': ' + message[:500] if message else ''}{hint}")
        err.status = status  # type: ignore[attr-defined]
        return err

    def _list_jobs(self) -> list[dict]:
        out = self._call(f"list Jobs in namespace {self.namespace}", self._batch.list_namespaced_job,
                         self.namespace, label_selector=SELECTOR)
        return list(out.get("items") or ())

    def _job(self, name: str) -> dict | None:
        try:
            return self._call(f"get Job {name}", self._batch.read_namespaced_job, name, self.namespace)
        except KubernetesError as exc:
            if getattr(exc, "status", 0) == 404:
                return None
            raise

    def _pods(self, name: str) -> list[dict]:
        out = self._call(f"list the pods of Job {name}", self._core.list_namespaced_pod, self.namespace,
                         label_selector=f"{JOB_NAME_LABEL}={name}")
        return sorted(out.get("items") or (), key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")

    def _log_tail(self, pod: str) -> str:
        try:
            data = self._call(f"read the log of pod {pod}", self._core.read_namespaced_pod_log, pod, self.namespace,
                              container=CONTAINER, tail_lines=80)
        except KubernetesError as exc:
            log.warning("%s", exc)
            return ""
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")

    def _delete(self, name: str, policy: str) -> bool:
        """Delete the Job (``Foreground``: its pod first, gracefully). False if it was gone already."""
        try:
            self._call(f"delete Job {name}", self._batch.delete_namespaced_job, name, self.namespace,
                       body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": policy})
            return True
        except KubernetesError as exc:
            if getattr(exc, "status", 0) == 404:
                return False
            raise

    # -- the Job -----------------------------------------------------------------------------------
    def args(self, flow_id: str, generation: int, once: bool, backfill: list[str] | None = None) -> list[str]:
        args = ["-flow-id", flow_id, "-generation", str(generation)]
        empty_reads = self.tuned.k8s_job_max_empty_reads
        if backfill is not None:
            args += ["-mode", "backfill", "-tables", ",".join(backfill)]
        elif once or empty_reads:
            args += ["-max-empty-reads", str(empty_reads or self.run_once_empty_reads)]
        return args + list(self.tuned.k8s_job_args)

    def manifest(self, flow_id: str, generation: int, once: bool = False,
                 backfill: list[str] | None = None) -> dict:
        """The Job of a flow run."""
        t = self.tuned
        name = job_name(flow_id, generation, t.k8s_job_name_prefix)
        run = "backfill" if backfill is not None else "once" if once else "stream"
        labels = {**dict(t.k8s_job_labels), "app.kubernetes.io/name": "wallaby",
                  "app.kubernetes.io/component": "worker", "wallaby.io/flow": label_value(flow_id),
                  "wallaby.io/generation": str(generation), "wallaby.io/run": run}
        annotations = {**dict(t.k8s_job_annotations), FLOW_ANNOTATION: flow_id}
        env_from = [{"secretRef": {"name": n}} if kind == "secret" else {"configMapRef": {"name": n}}
                    for kind, n in t.k8s_job_env_from]
        container: dict[str, Any] = {
            "name": CONTAINER, "image": t.k8s_job_image, "command": list(t.k8s_job_command),
            "args": self.args(flow_id, generation, once, backfill),
            # WALLABY_K8S_JOB_ENV over the server's own settings (a name in both: the JOB_ENV value)
            "env": [{"name": k, "value": v} for k, v in {**worker_env(self.env), **dict(t.k8s_job_env)}.items()],
            # the worker's last lines (its "wallaby-worker: <cause>") become the termination message on a failure
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        if env_from:
            container["envFrom"] = env_from
        if t.k8s_job_image_pull_policy:
            container["imagePullPolicy"] = t.k8s_job_image_pull_policy
        pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container],
                               "terminationGracePeriodSeconds": max(1, math.ceil(self.stop_timeout))}
        if t.k8s_job_service_account:
            pod["serviceAccountName"] = t.k8s_job_service_account
        # WALLABY_K8S_JOB_TTL_SECONDS (default FINISHED_TTL); 0: no TTL, ended Jobs are kept until deleted
        ttl = {} if t.k8s_job_ttl_seconds is None else {"ttlSecondsAfterFinished": t.k8s_job_ttl_seconds}
        return {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels, "annotations": annotations},
            "spec": {"backoffLimit": 0, **ttl,
                     "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod}},
        }

    def _adopt(self, job: dict) -> None:
        meta = job.get("metadata") or {}
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        flow_id = annotations.get(FLOW_ANNOTATION) or labels.get("wallaby.io/flow")
        try:
            generation = int(labels.get("wallaby.io/generation", ""))
        except ValueError:
            return
        if not flow_id:
            return
        args = ((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers", [{}])[0].get(
            "args") or []
        run = JobRun(flow_id, generation, labels.get("wallaby.io/run", "stream") != "stream", meta["name"],
                     time.time(), catch_up="-max-empty-reads" in args)
        with self._lock:
            self._runs[run.name] = run

    # -- the dispatcher's interface ------------------------------------------------------------------
    def launch(self, flow_id: str, generation: int, *, once: bool = False,
               backfill: list[str] | None = None) -> JobRun:
        """Create the Job of a flow run at ``generation``: streaming, or until caught up (``once``), or a backfill
        of the ``backfill`` tables (a one-off too). Older Jobs of the flow still running are stopped first."""
        once = once or backfill is not None
        with self._lock:
            older = [r for r in self._runs.values() if r.flow_id == flow_id and r.generation < generation]
        for r in older:  # taken over from an earlier run of this server: superseded
            log.info("flow %s: stopping Job %s of generation %d", flow_id, r.name, r.generation,
                     extra={"flow": flow_id})
            self._stop_one(r, None)
        body = self.manifest(flow_id, generation, once, backfill)
        name = body["metadata"]["name"]
        what = f"create Job {name} in namespace {self.namespace}"
        try:
            self._call(what, self._batch.create_namespaced_job, self.namespace, body)
        except KubernetesError as exc:
            if getattr(exc, "status", 0) != 409:
                raise
            self._replace_ended(name, what, body)
        run = JobRun(flow_id, generation, once, name, time.time(),
                     catch_up=not once and bool(self.tuned.k8s_job_max_empty_reads))
        with self._lock:
            self._runs[name] = run
        log.info("flow %s: Job %s (generation %d) created%s", flow_id, name, generation,
                 " to run once" if once else "", extra={"flow": flow_id})
        return run

    def _replace_ended(self, name: str, what: str, body: dict) -> None:
        """A Job of that name exists (a flow deleted and created again, its old Job kept for ``FINISHED_TTL``):
        replaced if it has ended, else refused."""
        old = self._job(name)
        if old is not None and not _finished(old):
            raise KubernetesRefused(f"Kubernetes API server {self.host}: {what}: Job {name} exists and runs")
        self._delete(name, "Background")
        deadline = time.monotonic() + 30
        while self._job(name) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        self._call(what, self._batch.create_namespaced_job, self.namespace, body)

    def running(self, flow_id: str) -> JobRun | None:
        with self._lock:
            runs = [r for r in self._runs.values() if r.flow_id == flow_id]
        return max(runs, key=lambda r: r.generation) if runs else None

    def stop(self, flow_id: str, timeout: float | None = None) -> bool:
        """End the flow's Jobs gracefully (their pods get SIGTERM, then SIGKILL after the grace period); returns
        once they are gone. True if one was running."""
        stopped = False
        while (r := self.running(flow_id)) is not None:
            self._stop_one(r, timeout)
            stopped = True
        return stopped

    def _stop_one(self, r: JobRun, timeout: float | None) -> None:
        r.stopping = True
        grace = self.stop_timeout if timeout is None else timeout
        try:
            self._delete(r.name, "Foreground")
            deadline = time.monotonic() + grace + 30
            seen: dict | None = None
            while True:
                for pod in self._pods(r.name):
                    seen = _terminated(pod) or seen
                if self._job(r.name) is None:
                    break
                if time.monotonic() > deadline:
                    log.warning("flow %s: Job %s still there %.0fs after its deletion; no longer waiting", r.flow_id,
                                r.name, grace + 30, extra={"flow": r.flow_id})
                    break
                time.sleep(0.25)
        except KubernetesError:
            r.stopping = False  # the watcher keeps an eye on it
            raise
        rc = _returncode(int(seen.get("exitCode", 0))) if seen else EXIT_OK
        reason = "worker stopped" if not rc else reason_from_log(seen.get("message") or "") if seen else ""
        self._ended(r, rc, reason or f"worker exited with {rc}", stopped_by_us=True)

    def stop_all(self, timeout: float | None = None) -> None:
        with self._lock:
            ids = sorted({r.flow_id for r in self._runs.values()})
        threads = [threading.Thread(target=self._stop_quietly, args=(i, timeout)) for i in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _stop_quietly(self, flow_id: str, timeout: float | None) -> None:
        try:
            self.stop(flow_id, timeout)
        except KubernetesError as exc:
            log.error("flow %s: its Job was not stopped: %s", flow_id, exc, extra={"flow": flow_id})

    def close(self, timeout: float | None = None) -> None:
        self.stop_all(timeout)
        self._closed.set()
        self._watcher.join(5)
        self._release()

    def _release(self) -> None:
        self._api.close()
        for name in self._temps:
            try:
                os.unlink(name)
            except OSError:
                pass

    # -- the watcher ------------------------------------------------------------------------------------
    def _ended(self, r: JobRun, rc: int, reason: str, stopped_by_us: bool) -> None:
        with self._lock:
            if self._runs.pop(r.name, None) is None:
                return  # reported already
        log.info("flow %s: Job %s (generation %d) ended with %s", r.flow_id, r.name, r.generation, rc,
                 extra={"flow": r.flow_id})
        # a catch-up run that caught up ended as planned: a one-off's end for the manager (the flow stays as is)
        once = r.once or (r.catch_up and rc == EXIT_OK and not stopped_by_us)
        try:
            self.on_exit(WorkerExit(r.flow_id, r.generation, once, rc, reason, stopped_by_us))
        except Exception:  # the watcher must survive its owner's bugs
            log.exception("flow %s: handling the Job's end failed", r.flow_id, extra={"flow": r.flow_id})

    def _outcome(self, name: str, job: dict | None) -> tuple[int, str]:
        """The exit status and reason of an ended Job's worker."""
        for pod in reversed(self._pods(name)):
            term = _terminated(pod)
            status = pod.get("status") or {}
            if term is not None:
                code = int(term.get("exitCode", 1))
                rc = _returncode(code)
                if rc == EXIT_OK:
                    return rc, "worker finished"
                text = term.get("message") or self._log_tail(pod["metadata"]["name"])
                reason = reason_from_log(text)
                if rc < 0:
                    how = f"{term.get('reason')}, " if term.get("reason") not in (None, "", "Error") else ""
                    reason = f"worker killed by signal {-rc} ({how}exit code {code})" + (f": {reason}" if reason
                                                                                          else "")
                return rc, reason or f"worker exited with {code}"
            if status.get("phase") == "Failed":  # evicted, deadline: no container status
                why = f"{status.get('reason', '')} {status.get('message', '')}".strip()
                return -9, f"pod {pod['metadata']['name']} failed: {why}"
        for c in ((job or {}).get("status") or {}).get("conditions") or ():
            if c.get("type") in ("Failed", "FailureTarget") and c.get("status") == "True":
                return -9, f"Job {name} failed: {c.get('reason', '')}: {c.get('message', '')}".strip()
        return -9, f"Job {name} ended with no pod to tell how"

    def _poll(self) -> None:
        with self._lock:
            runs = [r for r in self._runs.values() if not r.stopping]
        if not runs:
            return
        jobs = {(j.get("metadata") or {}).get("name"): j for j in self._list_jobs()}
        waiting: dict[str, str] | None = None
        for r in runs:
            if r.stopping:
                continue
            job = jobs.get(r.name)
            if job is None:
                self._ended(r, -9, f"its Job {r.name} was deleted outside wallaby", stopped_by_us=False)
            elif _finished(job):
                rc, reason = self._outcome(r.name, job)
                self._ended(r, rc, reason, stopped_by_us=False)
            elif time.time() - r.started_at >= self.stuck_after and (
                    waiting is not None or time.monotonic() - self._last_stuck_check >= STUCK_CHECK_INTERVAL):
                if waiting is None:
                    self._last_stuck_check = time.monotonic()
                    waiting = self._stuck_pods()
                if r.name in waiting:
                    self._give_up(r, waiting[r.name])

    def _stuck_pods(self) -> dict[str, str]:
        """Job name -> why its pod's worker container cannot start (see :data:`STUCK_REASONS`)."""
        out = self._call(f"list the worker pods in namespace {self.namespace}", self._core.list_namespaced_pod,
                         self.namespace, label_selector=SELECTOR)
        stuck = {}
        for pod in out.get("items") or ():
            for cs in (pod.get("status") or {}).get("containerStatuses") or ():
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if cs.get("name") == CONTAINER and waiting.get("reason") in STUCK_REASONS:
                    job = ((pod.get("metadata") or {}).get("labels") or {}).get(JOB_NAME_LABEL, "")
                    stuck[job] = (f"pod {pod['metadata']['name']}: {waiting['reason']}"
                                  f"{': ' + waiting['message'] if waiting.get('message') else ''}")
        return stuck

    def _give_up(self, r: JobRun, why: str) -> None:
        """The run's pod cannot start: delete its Job, end the run as a permanent failure."""
        r.stopping = True
        try:
            self._delete(r.name, "Background")
        except KubernetesError:
            r.stopping = False
            raise
        log.error("flow %s: the worker of Job %s cannot start: %s", r.flow_id, r.name, why, extra={"flow": r.flow_id})
        self._ended(r, EXIT_PERMANENT, f"the worker's pod cannot start: {why}", stopped_by_us=False)

    def _watch(self) -> None:
        while not self._closed.wait(self.poll_interval):
            try:
                self._poll()
                if self._last_watch_error:
                    log.info("Kubernetes API server %s answers again", self.host)
                self._last_watch_error = ""
            except KubernetesError as exc:
                if str(exc) != self._last_watch_error:  # once per different error, not every second
                    log.warning("watching the flow Jobs: %s", exc)
                self._last_watch_error = str(exc)
            except Exception:
                log.exception("watching the flow Jobs failed")


__all__ = ["JobRun", "KubernetesDispatcher", "KubernetesError", "job_name", "label_value", "reason_from_log"]
