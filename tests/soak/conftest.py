"""Soak fixtures: an S3 of the soak's own (moto, which a scenario pauses), and the results table at the end.

The soak runs only when asked for: ``make test-soak`` (``-m soak``), or any ``-m`` expression naming ``soak``;
otherwise its tests are deselected, so ``make test`` and ``make test-rapid`` run what they ran before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.kafka_broker import kafka_broker  # noqa: F401 - fixture: a broker of this session, stopped by a scenario
from tests.soak import harness


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: the soak (make test-soak); deselected unless -m names it")


def pytest_collection_modifyitems(config, items):
    if "soak" in (config.option.markexpr or "") or os.environ.get("WALLABY_SOAK") == "1":
        return
    soak = [i for i in items if i.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [i for i in items if i.get_closest_marker("soak") is None]


@pytest.fixture(scope="session")
def moto(tmp_path_factory) -> Iterator[harness.Moto]:
    try:
        server = harness.Moto(tmp_path_factory.mktemp("moto"))
    except Exception as exc:  # a service that cannot start fails the run, it is never skipped
        pytest.fail(f"moto S3 server could not be started: {exc}", pytrace=False)
    yield server
    server.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not harness.RESULTS:
        return
    terminalreporter.write_sep("=", "soak results")
    terminalreporter.write_line(harness.render())
    terminalreporter.write_line(f"(also in {harness.RESULTS_FILE.relative_to(harness.ROOT)})")
