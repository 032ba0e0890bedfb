"""A real Apache Kafka broker for the tests: single node, KRaft mode (no ZooKeeper), on 127.0.0.1.

The broker runs from the Apache Kafka jars of Maven Central, on the machine's JDK (``java`` on PATH, or
``$JAVA_HOME/bin/java``; Kafka 4.x needs Java 17+). The jars are downloaded once into ``.cache/kafka/`` (every one
checked against the SHA-1 pinned below and the ``.sha1`` Maven Central publishes next to it) and reused afterwards;
nothing is installed system-wide.

Use it by importing the session fixture: ``from tests.kafka_broker import kafka_broker  # noqa: F401``, or with
``pytest_plugins = ["tests.kafka_broker"]`` in a conftest. It yields a started :class:`KafkaBroker`; ``.bootstrap``
is ``"127.0.0.1:PORT"``. A test may ``stop()`` the broker and ``start()`` it again: it comes back on the same port
with the same log dirs, so the data survives. A broker that cannot be started fails the run with the reason (and the
broker's log tail); it is never skipped.

The jar list is the runtime closure of ``org.apache.kafka:kafka_2.13:KAFKA_VERSION`` plus the log4j2 binding the
Kafka distribution ships (log4j-slf4j-impl, log4j-core), as resolved by Maven (compile and runtime scopes, optional
and test dependencies left out). To move to another Kafka version, resolve it again, e.g. with a throwaway pom
holding those three dependencies and ``mvn dependency:list -DincludeScope=runtime``, and pin the new list with the
SHA-1 of each jar; the code never needs Maven at test time.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache" / "kafka"
MAVEN_REPO = os.environ.get("WALLABY_MAVEN_REPO", "https://repo1.maven.org/maven2").rstrip("/")

KAFKA_VERSION = "4.1.2"
START_TIMEOUT = 90.0  # seconds from launching the JVM to the broker answering metadata requests
STOP_TIMEOUT = 30.0  # seconds of graceful (SIGTERM, controlled) shutdown before the JVM is killed
JVM_HEAP = ("-Xmx512m", "-Xms256m")
# C1 only: starts the broker in about half the time on a small machine (C2 compiling competes with startup for the
# CPUs); the steady-state throughput it costs does not matter for tests.
JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
             "-Djava.net.preferIPv4Stack=true")

# group:artifact:version and the SHA-1 of its jar, as resolved by Maven for kafka_2.13:4.1.2 +
# log4j-slf4j-impl:2.24.3 + log4j-core:2.24.3 (runtime classpath; about 44 MB in all).
JARS: tuple[tuple[str, str], ...] = (
    ("at.yawk.lz4:lz4-java:1.10.1", "f541d7f910fe3d76f38f799c507c48cc81b12ecb"),
    ("com.dynatrace.hash4j:hash4j:0.22.0", "2d61bfb5b38469cb76141b06dc68d36a9007e9ad"),
    ("com.fasterxml.jackson.core:jackson-annotations:2.19.4", "bbb09b1e7f7f5108890270eb701cb3ddef991c05"),
    ("com.fasterxml.jackson.core:jackson-core:2.19.4", "a720ca9b800742699e041c3890f3731fe516085e"),
    ("com.fasterxml.jackson.core:jackson-databind:2.19.4", "7a39bf9257b726b90b80f27fa3f5174bc75162a5"),
    ("com.fasterxml.jackson.dataformat:jackson-dataformat-csv:2.19.4", "84ffda878faf6e7b223eae0902b99ba720cbd7ca"),
    ("com.fasterxml.jackson.dataformat:jackson-dataformat-yaml:2.19.4", "500956daea0869bf753b94fdaa77e5dc99847d79"),
    ("com.fasterxml.jackson.datatype:jackson-datatype-jdk8:2.19.4", "90d304bcdb1a4bacb6f4347be625d75300973c60"),
    ("com.github.ben-manes.caffeine:caffeine:3.2.0", "35eba09997476a39492ac7f7b2bb0e8292c09d17"),
    ("com.github.luben:zstd-jni:1.5.6-10", "7e146ecb598af55d1f64d1c118af27569a848558"),
    ("com.google.re2j:re2j:1.8", "12c25e923e9e4fb1575a7640a2698745c6f19a94"),
    ("com.typesafe.scala-logging:scala-logging_2.13:3.9.5", "d5a0f61168371d8cff1c510f55407aa46bea8366"),
    ("com.yammer.metrics:metrics-core:2.2.0", "f82c035cfa786d3cbec362c38c22a5f5b1bc8724"),
    ("commons-beanutils:commons-beanutils:1.11.0", "ac03ea606d13de04c2e4508227680faff151f491"),
    ("commons-collections:commons-collections:3.2.2", "8ad72fe39fa8c91eaaf12aadb21e0c3661fe26d5"),
    ("commons-digester:commons-digester:2.1", "73a8001e7a54a255eef0f03521ec1805dc738ca0"),
    ("commons-logging:commons-logging:1.3.5", "a3fcc5d3c29b2b03433aa2d2f2d2c1b1638924a1"),
    ("commons-validator:commons-validator:1.10.1", "cdf5c2a69aad509c4db54786f19f1e1ccc471bcf"),
    ("net.sf.jopt-simple:jopt-simple:5.0.4", "4fdac2fbe92dfad86aa6e9301736f6b4342a3f5c"),
    ("net.sourceforge.argparse4j:argparse4j:0.7.0", "6f0621d0c3888de39e0f06d01f37ba53a798e657"),
    ("org.apache.kafka:kafka-clients:4.1.2", "c40bae292ab9f94f6c41c17dfda5f365700a59ad"),
    ("org.apache.kafka:kafka-coordinator-common:4.1.2", "c42017d14a64649775b6bd8f162f95ea2f74b79d"),
    ("org.apache.kafka:kafka-group-coordinator-api:4.1.2", "c9343617234507bc3a3134fb1e1e3903bc84b0cb"),
    ("org.apache.kafka:kafka-group-coordinator:4.1.2", "7bd1abdc1f2736aab4577b8a5f7fd883f148853f"),
    ("org.apache.kafka:kafka-metadata:4.1.2", "e06c93d2ad7f2085b042f346ea0ef19100d8a9ff"),
    ("org.apache.kafka:kafka-raft:4.1.2", "5aa660c2afb206be3f0c09776a8f022ffb20e0ca"),
    ("org.apache.kafka:kafka-server-common:4.1.2", "3d049c33f09c645b5d89eaec20e7eaf763ff4681"),
    ("org.apache.kafka:kafka-server:4.1.2", "0fd8f6bef1c64a75dfe9db40451874816d4b9cc8"),
    ("org.apache.kafka:kafka-share-coordinator:4.1.2", "54430843c4d06dc509b7a06d3b0fd28937ffdafe"),
    ("org.apache.kafka:kafka-storage-api:4.1.2", "07328ded6e92523db9187c0a9e388a36faf97856"),
    ("org.apache.kafka:kafka-storage:4.1.2", "a923e448793a31c827569ea9dd325388ca299cbf"),
    ("org.apache.kafka:kafka-tools-api:4.1.2", "8be790ea470c0cef2a7ce3e040e6249b49b85f2d"),
    ("org.apache.kafka:kafka-transaction-coordinator:4.1.2", "e802d23bdcfd4f68525aa61d3f7ba7eafda7c102"),
    ("org.apache.kafka:kafka_2.13:4.1.2", "e6295c75d4618792465187a097926470232a2963"),
    ("org.apache.logging.log4j:log4j-api:2.24.3", "b02c125db8b6d295adf72ae6e71af5d83bce2370"),
    ("org.apache.logging.log4j:log4j-core:2.24.3", "7f6a261243ca767c7f38fd4b542bcde626c8894e"),
    ("org.apache.logging.log4j:log4j-slf4j-impl:2.24.3", "182894dfec8b730639c9ea065f1084ba85fcbaa3"),
    ("org.bitbucket.b_c:jose4j:0.9.6", "357a3836bb5da16f314f3a1e954518e5468cd915"),
    ("org.hdrhistogram:HdrHistogram:2.2.2", "7959933ebcc0f05b2eaa5af0a0c8689fa257b15c"),
    ("org.jspecify:jspecify:1.0.0", "7425a601c1c7ec76645a78d22b8c6a627edee507"),
    ("org.pcollections:pcollections:4.0.2", "c8398b4443deae11e6eaffbc04a371b4eb8f6b8e"),
    ("org.scala-lang:scala-library:2.13.16", "9e064d9304904fd7b6bd2b55a9e601b8c1c9006e"),
    ("org.scala-lang:scala-reflect:2.13.16", "4958d4e43faf2d6d66f18ce2aa9a3e5ba141f87b"),
    ("org.slf4j:slf4j-api:1.7.36", "6c62681a2f655b49963a5983b8b0950a6120ae14"),
    ("org.xerial.snappy:snappy-java:1.1.10.7", "3049f95640f4625a945cfab85715f603fa4c8f80"),
    ("org.yaml:snakeyaml:2.4", "e0666b825b796f85521f02360e77f4c92c5a7a07"),
)

_DOWNLOAD_ATTEMPTS = 4
_DOWNLOAD_TIMEOUT = 60.0  # per HTTP request (a stalled read), not per file


# --- jars -------------------------------------------------------------------------------------------------------


def _jar_url(coordinate: str) -> str:
    group, artifact, version = coordinate.split(":")
    return f"{MAVEN_REPO}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.jar"


def _jar_name(coordinate: str) -> str:
    group, artifact, version = coordinate.split(":")
    return f"{group}.{artifact}-{version}.jar"


def _sha1_of(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _http_get(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "wallaby-tests (urllib)"})
    with urllib.request.urlopen(req, timeout=_DOWNLOAD_TIMEOUT) as resp:
        return resp.read()


def _download_jar(coordinate: str, sha1: str, dest: Path) -> None:
    """Fetch one jar into ``dest`` (via a temp name, then a rename), checked against both SHA-1s."""
    url = _jar_url(coordinate)
    last: Exception | None = None
    for attempt in range(_DOWNLOAD_ATTEMPTS):
        if attempt:
            time.sleep(2**attempt)
        tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            published = _http_get(url + ".sha1").decode("ascii", "replace").split()[0].strip().lower()
            tmp.write_bytes(_http_get(url))
            got = _sha1_of(tmp)
            if got != published:
                raise ValueError(f"{url}: SHA-1 {got} does not match the published .sha1 {published}")
            if got != sha1:
                # The repository agrees with itself but not with the pin: never retried, never used.
                tmp.unlink()
                raise RuntimeError(f"{url}: SHA-1 {got} does not match the pinned {sha1}")
            os.replace(tmp, dest)
            return
        except RuntimeError:
            raise
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise RuntimeError(f"{url}: not found (404) on {MAVEN_REPO}") from None
            last = exc
        except (OSError, ValueError, urllib.error.URLError, IndexError) as exc:
            last = exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    raise RuntimeError(f"could not download {url} after {_DOWNLOAD_ATTEMPTS} attempts: {last}")


def ensure_kafka_jars(cache_dir: Path | str = CACHE_DIR) -> str:
    """The classpath of the pinned Kafka broker jars, downloading those not yet in ``cache_dir``.

    Jars already there are checked against their pinned SHA-1 (one with another hash is fetched again). A lock file
    keeps two concurrent pytest processes from downloading at the same time; the second waits, then finds the jars.
    """
    lib = Path(cache_dir) / KAFKA_VERSION / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    paths = [lib / _jar_name(coordinate) for coordinate, _ in JARS]
    with (Path(cache_dir) / ".lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            missing = [(c, s, p) for (c, s), p in zip(JARS, paths, strict=True)
                       if not (p.is_file() and _sha1_of(p) == s)]
            if missing:
                with ThreadPoolExecutor(max_workers=8) as pool:
                    for future in [pool.submit(_download_jar, *m) for m in missing]:
                        future.result()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return os.pathsep.join(str(p) for p in paths)


def find_java() -> str:
    """``$JAVA_HOME/bin/java`` if set, else ``java`` from PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise RuntimeError("no Java runtime: neither $JAVA_HOME/bin/java nor `java` on PATH (Kafka needs Java 17+)")
    return java


# --- the broker -------------------------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _cluster_id() -> str:
    """A random Kafka cluster id (a UUID in URL-safe base64, 22 characters, not starting with '-')."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


_LIVE: weakref.WeakSet[KafkaBroker] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """No JVM outlives the interpreter (when it exits normally, without a session teardown)."""
    for broker in list(_LIVE):
        proc = broker._proc
        if proc is not None and proc.poll() is None:
            proc.kill()


class KafkaBroker:
    """One Kafka broker+controller process (KRaft, node 1) with its config, data and logs in ``workdir``.

    Ports are chosen at the first ``start()`` and kept for the life of the object, so ``stop()`` then ``start()``
    brings the same broker back on the same address with its data.
    """

    def __init__(self, workdir: Path | str, *, cache_dir: Path | str = CACHE_DIR,
                 start_timeout: float = START_TIMEOUT, stop_timeout: float = STOP_TIMEOUT) -> None:
        self.workdir = Path(workdir)
        self.cache_dir = Path(cache_dir)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.port: int | None = None
        self.controller_port: int | None = None
        self.data_dir = self.workdir / "data"
        self.config_file = self.workdir / "server.properties"
        self.log4j_file = self.workdir / "log4j2.properties"
        self.server_log = self.workdir / "server.log"
        self.console_log = self.workdir / "console.log"
        self._proc: subprocess.Popen | None = None
        self._classpath: str | None = None
        self._log_marks: dict[Path, int] = {}

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise RuntimeError("the broker has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.console_log, self.server_log):
            tail = _tail(path, lines)
            if tail.strip():
                parts.append(f"--- {path.name} (last {lines} lines) ---\n{tail}")
        return "\n".join(parts) or "(no broker output)"

    # -- lifecycle

    def start(self) -> None:
        """Start the broker (formatting its storage the first time) and wait until it answers."""
        if self.running:
            return
        if self._classpath is None:
            self._classpath = ensure_kafka_jars(self.cache_dir)
        java = find_java()
        if self.port is None:
            self.port, self.controller_port = _free_ports(2)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format(java)
        # A port freed by stop() may still be taken for a moment (a socket being closed): retry the bind.
        deadline = time.monotonic() + self.start_timeout
        while True:
            self._launch(java)
            try:
                self._wait_ready(deadline)
                return
            except _BrokerExited as exc:
                if "Address already in use" in self._output_since_launch() and time.monotonic() < deadline - 10:
                    time.sleep(1.0)
                    continue
                raise RuntimeError(str(exc)) from None

    def stop(self) -> None:
        """Stop the broker: SIGTERM (a controlled shutdown), then SIGKILL after ``stop_timeout`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- internals

    def _jvm(self, java: str) -> list[str]:
        return [java, *JVM_HEAP, *JVM_FLAGS, f"-Dlog4j2.configurationFile={self.log4j_file}",
                f"-Dkafka.logs.dir={self.workdir}", "-cp", self._classpath or ""]

    def _write_config(self) -> None:
        listeners = f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": listeners,
            "advertised.listeners": listeners,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "3",
            "auto.create.topics.enable": "true",
            "message.max.bytes": "10485760",
            "replica.fetch.max.bytes": "10485760",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        self.log4j_file.write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = file\n"
            f"appender.file.fileName = {self.server_log}\n"
            "appender.file.append = true\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = file\n"
            # The state change and request loggers are chatty at INFO/DEBUG in the distribution's config too.
            "logger.state.name = state.change.logger\n"
            "logger.state.level = WARN\n"
        )

    def _format(self, java: str) -> None:
        cmd = [*self._jvm(java), "kafka.tools.StorageTool", "format", "-t", _cluster_id(),
               "-c", str(self.config_file), "--standalone"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.workdir)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"formatting the Kafka storage timed out: {exc}") from None
        if res.returncode != 0:
            raise RuntimeError(f"formatting the Kafka storage failed (exit {res.returncode}):\n"
                               f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}\n{self.log_tail()}")

    def _diagnostics(self) -> str:
        """The error lines the broker logged since it was launched, then the tail of its logs."""
        errors = [line[:400] for line in self._output_since_launch().splitlines()
                  if " ERROR " in line or " FATAL " in line or line.startswith(("Caused by:", "Exception", "Error"))]
        head = "--- errors since launch ---\n" + "\n".join(errors[-15:]) + "\n" if errors else ""
        return head + self.log_tail(30)

    def _cluster_id(self) -> str:
        for line in (self.data_dir / "meta.properties").read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.partition("=")[2].strip()
        raise RuntimeError(f"no cluster.id in {self.data_dir / 'meta.properties'}")

    def _output_since_launch(self) -> str:
        text = []
        for path, start in self._log_marks.items():
            with contextlib.suppress(OSError), path.open("rb") as f:
                f.seek(start)
                text.append(f.read().decode(errors="replace"))
        return "\n".join(text)

    def _launch(self, java: str) -> None:
        self._log_marks = {p: (p.stat().st_size if p.exists() else 0) for p in (self.console_log, self.server_log)}
        with self.console_log.open("ab") as out:
            out.write(f"\n=== starting kafka.Kafka at {time.strftime('%H:%M:%S')} ===\n".encode())
            out.flush()
            self._proc = subprocess.Popen([*self._jvm(java), "kafka.Kafka", str(self.config_file)],
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          cwd=self.workdir, start_new_session=True)
        _LIVE.add(self)

    def _wait_ready(self, deadline: float) -> None:
        from confluent_kafka.admin import AdminClient

        proc = self._proc
        assert proc is not None
        cluster_id = self._cluster_id()
        admin = None
        last = "no answer yet"
        while True:
            if proc.poll() is not None:
                self._proc = None
                raise _BrokerExited(f"the Kafka broker exited with code {proc.returncode} while starting\n"
                                    f"{self._diagnostics()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Kafka broker did not answer on {self.bootstrap} within "
                                   f"{self.start_timeout:.0f} s (last: {last})\n{self._diagnostics()}")
            try:
                # Connect first, so that the admin client does not log refused connections while the JVM starts.
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if admin is None:
                    admin = AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 2000,
                                         "reconnect.backoff.max.ms": 500})
                meta = admin.list_topics(timeout=2)
                if meta.cluster_id != cluster_id:  # someone else's broker on this port
                    last = f"a broker of another cluster ({meta.cluster_id}, ours is {cluster_id}) answers"
                elif 1 in meta.brokers:
                    return
                else:
                    last = f"metadata without node 1: {meta.brokers}"
            except Exception as exc:  # not listening yet, or not answering yet
                last = repr(exc)
            time.sleep(0.25)


class _BrokerExited(Exception):
    pass


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory) -> Iterator[KafkaBroker]:
    """A Kafka broker running for the whole session. Fails the run with the reason if it cannot start."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    failure = None
    try:
        broker.start()
    except Exception as exc:  # a service that cannot start fails the run, it is never skipped
        broker.stop()
        failure = f"Kafka broker could not be started: {exc}"
    if failure:
        pytest.fail(failure, pytrace=False)
    yield broker
    broker.stop()


# --- topics -------------------------------------------------------------------------------------------------------


def create_topic(bootstrap: str, topic: str, partitions: int = 3, timeout: float = 30.0, **config: str) -> None:
    """Create ``topic`` and wait until every partition has a leader.

    Auto-creation by a metadata request is asynchronous (the first answer for a new topic is an
    UNKNOWN_TOPIC_OR_PART error, the topic shows up a moment later); a test that wants the topic to be there up front
    creates it with this.
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, num_partitions=partitions, replication_factor=1, config=dict(config))
    admin.create_topics([new], operation_timeout=timeout)[topic].result(timeout)
    while True:
        meta = admin.list_topics(topic, timeout=max(deadline - time.monotonic(), 1.0)).topics.get(topic)
        if (meta is not None and meta.error is None and len(meta.partitions) == partitions
                and all(p.leader >= 0 for p in meta.partitions.values())):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic!r} has no leader for every partition after {timeout} s: {meta}")
        time.sleep(0.1)


# --- reading a topic --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp: int  # ms since the epoch (create time as set by the producer)


def consume_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Message]:
    """Every message of ``topic``, read from the beginning by a fresh consumer, sorted by (partition, offset).

    "Every" is up to the end of each partition when the call starts (its high watermark then). A topic that does not
    exist within ``timeout`` gives ``[]``; a topic that cannot be read to its end within ``timeout`` raises
    ``TimeoutError``.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    deadline = time.monotonic() + timeout
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"consume-all-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "reconnect.backoff.max.ms": 1000,
        "fetch.message.max.bytes": 10485760,
    })
    try:
        partitions: list[int] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                meta = consumer.list_topics(topic, timeout=min(remaining, 5.0)).topics.get(topic)
            except Exception:  # broker not answering (yet): try again until the deadline
                meta = None
            if meta is not None and meta.error is None and meta.partitions:
                partitions = sorted(meta.partitions)
                break
            time.sleep(0.2)

        ends: dict[int, int] = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                       timeout=max(deadline - time.monotonic(), 1.0))
            if high > low:
                ends[p] = high
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])

        out: list[Message] = []
        position = {p: -1 for p in ends}  # next offset to read, once known
        while any(position[p] < ends[p] for p in ends):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                progress = ", ".join(f"p{p}: {max(position[p], 0)}/{ends[p]}" for p in ends)
                raise TimeoutError(f"could not read topic {topic!r} to its end within {timeout} s ({progress})")
            msg = consumer.poll(min(remaining, 1.0))
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if msg.partition() in position:
                        position[msg.partition()] = max(position[msg.partition()], msg.offset())
                    continue
                if err.retriable() or not err.fatal():
                    continue
                raise RuntimeError(f"consuming {topic!r}: {err}")
            p = msg.partition()
            if p not in ends or msg.offset() >= ends[p]:
                continue  # written after the call started
            position[p] = max(position[p], msg.offset() + 1)
            out.append(Message(topic=msg.topic(), partition=p, offset=msg.offset(), key=msg.key(), value=msg.value(),
                               headers=list(msg.headers() or []), timestamp=msg.timestamp()[1]))
        out.sort(key=lambda m: (m.partition, m.offset))
        return out
    finally:
        consumer.close()
