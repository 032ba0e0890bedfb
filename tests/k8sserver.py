"""A Kubernetes API server for tests, over HTTPS, with a tiny kubelet: no cluster is reachable here.

:class:`KubeAPI` serves the calls :mod:`wallaby.control.api.kubernetes` makes, as the real API server answers them:

- ``/apis/batch/v1/namespaces/{ns}/jobs``: create (every Job validated against the Kubernetes 1.37 OpenAPI schema,
  strict, with ``kubernetes-validate``: 422 ``Invalid`` like the real one), list by ``labelSelector``, get, delete
  with ``propagationPolicy`` (``Foreground``: the Job stays, with a ``deletionTimestamp``, until its pod is gone;
  ``Background``: gone at once, the pod killed after; ``Orphan``, the API's default for Jobs: the pod keeps running);
- ``/api/v1/namespaces/{ns}/pods`` (list by ``labelSelector``, get), ``pods/{name}/log`` (``tailLines``);
- ``/api/v1/namespaces/{ns}/secrets`` and ``configmaps``: create and get (the tests make the ``envFrom`` sources so);
- errors are ``Status`` objects with their code (401, 404, 409, 422).

Every call needs ``Authorization: Bearer <token>`` or a client certificate signed by the test CA (mTLS); else 401.
The CA, the server's and a client's certificates are made at start with ``cryptography``.

The kubelet: each Job gets a pod ``<job>-xxxxx`` labelled as the Job controller labels them, whose container runs
as a local process: its ``command`` + ``args`` (``wallaby-worker`` is ``sys.executable -m wallaby.control.worker``,
the image's entry point), in the "image's" environment (PATH, HOME, PYTHONPATH) plus the ``envFrom`` Secrets and
ConfigMaps plus ``env``; the pod and Job statuses follow the process (Running, then Succeeded or Failed with the exit
code, 128+N for a signal, and a termination message per ``terminationMessagePolicy``). Deleting a pod's Job sends
SIGTERM, then SIGKILL after ``terminationGracePeriodSeconds``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import re
import signal
import ssl
import string
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.37.0"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- certificates -----------------------------------------------------------------------------------------


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_cn: str, key, issuer_cert=None, issuer_key=None, *, ca: bool = False, server: bool = False,
          organization: str | None = None):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    name = x509.Name(attrs)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer_cert.subject if issuer_cert is not None else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                      content_commitment=False, key_encipherment=False,
                                                      data_encipherment=False, key_agreement=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                        critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())


def _write_pem(path: Path, cert=None, key=None) -> Path:
    from cryptography.hazmat.primitives import serialization

    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
    return path


class Certificates:
    """The test CA; the API server's certificate (localhost, 127.0.0.1); a client certificate (CN
    ``wallaby-dispatcher``) it signed; and one from another CA, which the server does not trust."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        ca_key = _key()
        ca = _cert("wallaby-test-ca", ca_key, ca=True)
        self.ca = _write_pem(directory / "ca.pem", ca)
        server_key = _key()
        self.server_cert = _write_pem(directory / "server.pem", _cert("kube-apiserver", server_key, ca, ca_key,
                                                                       server=True))
        self.server_key = _write_pem(directory / "server-key.pem", key=server_key)
        client_key = _key()
        self.client_cert = _write_pem(directory / "client.pem", _cert("wallaby-dispatcher", client_key, ca, ca_key,
                                                                       organization="wallaby"))
        self.client_key = _write_pem(directory / "client-key.pem", key=client_key)
        other_key = _key()
        other_ca = _cert("someone-else", other_key, ca=True)
        rogue_key = _key()
        self.rogue_cert = _write_pem(directory / "rogue.pem", _cert("wallaby-dispatcher", rogue_key, other_ca,
                                                                     other_key))
        self.rogue_key = _write_pem(directory / "rogue-key.pem", key=rogue_key)


# -- the API ----------------------------------------------------------------------------------------------

_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            409: "AlreadyExists", 422: "Invalid"}
_RESOURCES = {"jobs": ("batch", "Job"), "pods": ("", "Pod"), "secrets": ("", "Secret"),
              "configmaps": ("", "ConfigMap")}
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class ApiError(Exception):
    def __init__(self, code: int, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}


def status(code: int, message: str, details: dict | None = None) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure" if code >= 400 else "Success",
            "message": message, "reason": _REASONS.get(code, ""), "details": details or {}, "code": code}


def matches(labels: dict, selector: str) -> bool:
    """``labelSelector`` equality and existence terms: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class Pod:
    """A pod the kubelet runs: its object, its process, its log."""

    def __init__(self, obj: dict, log_path: Path):
        self.obj = obj
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.deleting = False
        self.exit_code: int | None = None  # the container's (128+N for signal N)

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]


class KubeAPI:
    """The test API server (see the module docstring). ``url``, ``token``, ``certs``; ``created`` holds every Job
    body as it was sent, ``deletes`` every delete's (name, propagationPolicy), ``users`` who called (``token`` or
    the client certificate's CN), ``pods`` the kubelet's pods by name."""

    def __init__(self, tmp: Path, token: str = "k8s-test-token-s3cr3t", run_pods: bool = True,
                 image_env: dict[str, str] | None = None):
        self.tmp = tmp
        self.token = token
        self.run_pods = run_pods
        self.certs = Certificates(tmp / "k8s-certs")
        self.logs = tmp / "pod-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # the "image": what a container has before the Job's env
        self.image_env = image_env or {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                       "HOME": os.environ.get("HOME", str(tmp)), "PYTHONPATH": str(ROOT),
                                       "LANG": "C.UTF-8"}
        self.objects: dict[tuple[str, str, str], dict] = {}  # (resource, namespace, name) -> object
        self.pods: dict[str, Pod] = {}
        self.created: list[dict] = []
        self.deletes: list[tuple[str, str | None]] = []
        self.users: list[str] = []
        self.lock = threading.RLock()
        self._rv = 0
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.certs.server_cert, self.certs.server_key)
        ctx.load_verify_locations(self.certs.ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # a client certificate, if sent, must be the CA's
        api = self

        class Handler(_Handler):
            kube = api

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="kube-api", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> KubeAPI:
        self._thread.start()
        return self

    def close(self) -> None:
        with self.lock:
            pods = list(self.pods.values())
        for pod in pods:
            if pod.proc is not None and pod.proc.poll() is None:
                pod.proc.send_signal(signal.SIGTERM)
        for pod in pods:
            if pod.proc is not None:
                try:
                    pod.proc.wait(20)
                except subprocess.TimeoutExpired:
                    pod.proc.kill()
                    pod.proc.wait()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- helpers for tests -----------------------------------------------------------------------------
    def jobs(self, namespace: str | None = None) -> list[dict]:
        with self.lock:
            return [json.loads(json.dumps(o)) for (r, ns, _), o in sorted(self.objects.items())
                    if r == "jobs" and (namespace is None or ns == namespace)]

    def pods_of(self, job: str) -> list[Pod]:
        with self.lock:
            return [p for p in self.pods.values()
                    if p.obj["metadata"]["labels"].get("batch.kubernetes.io/job-name") == job]

    def pod_log(self, job_prefix: str = "") -> str:
        """The logs of the pods whose name starts with ``job_prefix``, the last 4000 characters of each."""
        with self.lock:
            pods = [p for n, p in sorted(self.pods.items()) if n.startswith(job_prefix)]
        return "\n".join(f"--- {p.name}\n{p.log_path.read_text(errors='replace')[-4000:]}"
                         for p in pods if p.log_path.exists()) or "(no pod log)"

    def put(self, resource: str, namespace: str, obj: dict) -> dict:
        """Store a Secret or ConfigMap directly (as ``kubectl create`` would)."""
        return self._create(resource, namespace, obj)

    # -- the objects -----------------------------------------------------------------------------------
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _create(self, resource: str, namespace: str, body: dict) -> dict:
        group, kind = _RESOURCES[resource]
        meta = body.get("metadata") or {}
        name = meta.get("name") or ""
        if meta.get("namespace") not in (None, namespace):
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the"
                                " request")
        if body.get("kind") not in (None, kind):
            raise ApiError(400, f"expected kind {kind}, got {body.get('kind')}")
        if resource == "jobs":
            import kubernetes_validate

            try:
                kubernetes_validate.validate(body, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.absolute_path)
                raise ApiError(422, f'Job.batch "{name}" is invalid: {path}: {exc.message}',
                               {"name": name, "group": group, "kind": "jobs",
                                "causes": [{"reason": "FieldValueInvalid", "message": exc.message,
                                            "field": path}]}) from None
            if not _DNS_LABEL.fullmatch(name):
                raise ApiError(422, f'Job.batch "{name}" is invalid: metadata.name: Invalid value: "{name}": must'
                                    " be no more than 63 characters and a lowercase RFC 1123 label",
                               {"name": name, "group": group, "kind": "jobs"})
        key = (resource, namespace, name)
        with self.lock:
            if key in self.objects:
                raise ApiError(409, f'{resource}.{group or "core"} "{name}" already exists'.replace(".core", ""),
                               {"name": name, "group": group, "kind": resource})
            obj = json.loads(json.dumps(body))
            obj.setdefault("apiVersion", "batch/v1" if group else "v1")
            obj["kind"] = kind
            uid = str(uuid.uuid4())
            obj["metadata"] = {**meta, "namespace": namespace, "uid": uid, "resourceVersion": self._next_rv(),
                               "creationTimestamp": _now()}
            if resource == "jobs":
                self.created.append(json.loads(json.dumps(body)))
                controller = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                              "controller-uid": uid, "job-name": name}
                template = obj["spec"]["template"]
                template.setdefault("metadata", {}).setdefault("labels", {}).update(controller)
                obj["spec"].setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
                obj["spec"].setdefault("completions", 1)
                obj["spec"].setdefault("parallelism", 1)
                obj["status"] = {}
            self.objects[key] = obj
        if resource == "jobs" and self.run_pods:
            self._kubelet_start(namespace, obj)
        return obj

    def _get(self, resource: str, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self.objects.get((resource, namespace, name))
            if obj is None:
                group, _ = _RESOURCES[resource]
                raise ApiError(404, f'{resource}{"." + group if group else ""} "{name}" not found',
                               {"name": name, "group": group, "kind": resource})
            return json.loads(json.dumps(obj))

    def _list(self, resource: str, namespace: str, selector: str) -> dict:
        group, kind = _RESOURCES[resource]
        with self.lock:
            items = [json.loads(json.dumps(o)) for (r, ns, _), o in sorted(self.objects.items())
                     if r == resource and ns == namespace and matches(o["metadata"].get("labels") or {}, selector)]
            rv = str(self._rv)
        return {"kind": f"{kind}List", "apiVersion": "batch/v1" if group else "v1",
                "metadata": {"resourceVersion": rv}, "items": items}

    def _delete_job(self, namespace: str, name: str, policy: str | None) -> dict:
        with self.lock:
            job = self.objects.get(("jobs", namespace, name))
            if job is None:
                self._get("jobs", namespace, name)  # raises the 404
            self.deletes.append((name, policy))
            pods = self.pods_of(name)
            if policy == "Foreground" and any(not self._gone(p) for p in pods):
                job["metadata"]["deletionTimestamp"] = _now()
                job["metadata"]["finalizers"] = ["foregroundDeletion"]
                job["metadata"]["resourceVersion"] = self._next_rv()
                answer = json.loads(json.dumps(job))
            else:
                del self.objects[("jobs", namespace, name)]
                answer = status(200, "")
                answer["details"] = {"name": name, "group": "batch", "kind": "jobs", "uid": job["metadata"]["uid"]}
                answer["status"] = "Success"
                del answer["message"]
        if policy in ("Foreground", "Background"):
            for pod in pods:
                self._kill(pod)
        return answer

    @staticmethod
    def _gone(pod: Pod) -> bool:
        return pod.proc is None or (pod.proc.poll() is not None and pod.deleting)

    # -- the kubelet -----------------------------------------------------------------------------------
    def _resolve_env(self, namespace: str, container: dict) -> tuple[dict[str, str] | None, str]:
        env = dict(self.image_env)
        for src in container.get("envFrom") or ():
            ref = src.get("secretRef") or src.get("configMapRef") or {}
            resource = "secrets" if "secretRef" in src else "configmaps"
            with self.lock:
                obj = self.objects.get((resource, namespace, ref.get("name", "")))
            if obj is None:
                if ref.get("optional"):
                    continue
                kind = "secret" if resource == "secrets" else "configmap"
                return None, f'{kind} "{ref.get("name")}" not found'
            data = obj.get("data") or {}
            if resource == "secrets":
                data = {k: base64.b64decode(v).decode() for k, v in data.items()}
                data.update(obj.get("stringData") or {})
            env.update({f"{src.get('prefix', '')}{k}": v for k, v in data.items()})
        for var in container.get("env") or ():
            if "value" in var:
                env[var["name"]] = var["value"]
        return env, ""

    def _kubelet_start(self, namespace: str, job: dict) -> None:
        template = job["spec"]["template"]
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        name = f"{job['metadata']['name']}-{suffix}"
        container = template["spec"]["containers"][0]
        obj = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                            "labels": dict(template["metadata"]["labels"]),
                            "annotations": dict(template["metadata"].get("annotations") or {}),
                            "creationTimestamp": _now(),
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                                 "name": job["metadata"]["name"], "uid": job["metadata"]["uid"],
                                                 "controller": True, "blockOwnerDeletion": True}]},
               "spec": json.loads(json.dumps(template["spec"])),
               "status": {"phase": "Pending"}}
        pod = Pod(obj, self.logs / f"{name}.log")
        with self.lock:
            self.pods[name] = pod
            self.objects[("pods", namespace, name)] = obj
            job["status"] = {"active": 1, "startTime": _now(), "ready": 0}
        env, problem = self._resolve_env(namespace, container)
        if env is None:  # the kubelet waits for the missing source; the pod stays Pending
            with self.lock:
                obj["status"]["containerStatuses"] = [{"name": container["name"], "ready": False,
                                                       "restartCount": 0, "image": container.get("image", ""),
                                                       "state": {"waiting": {"reason": "CreateContainerConfigError",
                                                                             "message": problem}}}]
            return
        argv = list(container.get("command") or ())
        if argv and argv[0] == "wallaby-worker":  # the image's entry point
            argv = [sys.executable, "-m", "wallaby.control.worker", *argv[1:]]
        argv += list(container.get("args") or ())
        with open(pod.log_path, "ab") as out:
            pod.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, cwd=str(self.tmp), start_new_session=True)
        with self.lock:
            obj["status"] = {"phase": "Running", "startTime": _now(), "podIP": "127.0.0.1",
                             "containerStatuses": [{"name": container["name"], "ready": True, "restartCount": 0,
                                                    "image": container.get("image", ""), "started": True,
                                                    "state": {"running": {"startedAt": _now()}}}]}
            job["status"]["ready"] = 1
        threading.Thread(target=self._kubelet_wait, args=(namespace, job["metadata"]["name"], pod, container),
                         name=f"kubelet-{name}", daemon=True).start()

    def _kubelet_wait(self, namespace: str, job_name: str, pod: Pod, container: dict) -> None:
        rc = pod.proc.wait()
        code = rc if rc >= 0 else 128 - rc
        message = ""
        if code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = pod.log_path.read_bytes().decode("utf-8", "replace").splitlines()[-80:]
            message = "\n".join(lines)[-2048:]
        with self.lock:
            pod.exit_code = code
            pod.obj["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
            pod.obj["status"]["containerStatuses"][0].update(ready=False, started=False, state={"terminated": {
                "exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message,
                "startedAt": pod.obj["status"]["startTime"], "finishedAt": _now()}})
            job = self.objects.get(("jobs", namespace, job_name))
            if job is not None:
                done = {"type": "Complete" if code == 0 else "Failed", "status": "True", "lastProbeTime": _now(),
                        "lastTransitionTime": _now()}
                if code:
                    done.update(reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit")
                job["status"] = {"startTime": job["status"].get("startTime"), "active": 0, "ready": 0,
                                 ("succeeded" if code == 0 else "failed"): 1, "conditions": [done],
                                 **({"completionTime": _now()} if code == 0 else {})}
                job["metadata"]["resourceVersion"] = self._next_rv()
        if pod.deleting:
            self._remove_pod(namespace, job_name, pod)

    def _kill(self, pod: Pod) -> None:
        """Delete the pod: SIGTERM, then SIGKILL after its terminationGracePeriodSeconds."""
        with self.lock:
            pod.deleting = True
            pod.obj["metadata"]["deletionTimestamp"] = _now()
        namespace = pod.obj["metadata"]["namespace"]
        job_name = pod.obj["metadata"]["labels"]["batch.kubernetes.io/job-name"]
        if pod.proc is None or pod.proc.poll() is not None:
            self._remove_pod(namespace, job_name, pod)
            return
        grace = pod.obj["spec"].get("terminationGracePeriodSeconds", 30)
        pod.proc.send_signal(signal.SIGTERM)

        def escalate() -> None:
            try:
                pod.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pod.proc.kill()

        threading.Thread(target=escalate, name=f"kill-{pod.name}", daemon=True).start()

    def kill_container(self, pod: Pod, sig: int = signal.SIGKILL) -> None:
        """The container dies (the OOM killer, a node problem): not a deletion."""
        pod.proc.send_signal(sig)

    def _remove_pod(self, namespace: str, job_name: str, pod: Pod) -> None:
        time.sleep(0.3)  # the pod's final status is visible a moment, as the kubelet reports it before it goes
        with self.lock:
            self.objects.pop(("pods", namespace, pod.name), None)
            job = self.objects.get(("jobs", namespace, job_name))
            left = [p for p in self.pods_of(job_name) if ("pods", namespace, p.name) in self.objects]
            if job is not None and job["metadata"].get("deletionTimestamp") and not left:
                del self.objects[("jobs", namespace, job_name)]


class _Handler(BaseHTTPRequestHandler):
    kube: KubeAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:
        pass

    def _send(self, code: int, body: dict | bytes, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _user(self) -> str | None:
        given = self.headers.get("Authorization", "")
        if given:  # the scheme in any case, as the real one takes it ("bearer <token>" in-cluster)
            scheme, _, token = given.partition(" ")
            return "token" if scheme.lower() == "bearer" and token.strip() == self.kube.token else None
        cert = self.connection.getpeercert()
        if cert:
            return dict(x[0] for x in cert["subject"]).get("commonName", "?")
        return None

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise ApiError(400, "the request body is not JSON") from None

    def _handle(self, method: str) -> None:
        try:
            user = self._user()
            if user is None:
                self._body()
                self._send(401, status(401, "Unauthorized"))
                return
            self.kube.users.append(user)
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            self._route(method, url.path, query)
        except ApiError as exc:
            self._send(exc.code, status(exc.code, exc.message, exc.details))

    def _route(self, method: str, path: str, query: dict) -> None:
        kube = self.kube
        m = re.fullmatch(r"/(?:apis/batch/v1|api/v1)/namespaces/([^/]+)/(jobs|pods|secrets|configmaps)"
                         r"(?:/([^/]+))?(/log)?", path)
        if not m or (m.group(2) == "jobs") != path.startswith("/apis/batch/v1/"):
            raise ApiError(404, f"the server could not find the requested resource ({method} {path})")
        namespace, resource, name, sub = m.groups()
        if sub:
            if resource != "pods" or method != "GET":
                raise ApiError(405, f"{method} is not allowed on {path}")
            kube._get("pods", namespace, name)
            with kube.lock:
                pod = kube.pods[name]
            lines = pod.log_path.read_bytes().decode("utf-8", "replace").splitlines(keepends=True)
            if "tailLines" in query:
                lines = lines[-int(query["tailLines"]):]
            self._send(200, "".join(lines).encode(), "text/plain")
        elif name is None and method == "GET":
            self._send(200, kube._list(resource, namespace, query.get("labelSelector", "")))
        elif name is None and method == "POST" and resource != "pods":
            self._send(201, kube._create(resource, namespace, self._body()))
        elif name is not None and method == "GET":
            self._send(200, kube._get(resource, namespace, name))
        elif name is not None and method == "DELETE" and resource == "jobs":
            options = self._body()
            policy = options.get("propagationPolicy") or query.get("propagationPolicy")
            self._send(200, kube._delete_job(namespace, name, policy))
        else:
            self._body()
            raise ApiError(405, f"{method} is not allowed on {path}")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


def secret(name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def config_map(name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
