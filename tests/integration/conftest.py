"""pytest fixtures: a test CA per session, a fresh mock and proxy per test."""
import os
import shutil
import tempfile

import pytest

from harness import Mock, Pki, Proxy, STMOCK, STPROXY


def pytest_sessionstart(session):
    for binary in (STPROXY, STMOCK):
        if not os.access(binary, os.X_OK):
            raise pytest.UsageError(f"{binary} is not built: run make first")


@pytest.fixture(scope="session")
def pki():
    directory = tempfile.mkdtemp(prefix="stproxy-pki-")
    yield Pki(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def start_mock(pki):
    started = []

    def start(**kwargs):
        mock = Mock(pki, **kwargs)
        started.append(mock)
        return mock

    yield start
    for mock in started:
        mock.stop()


@pytest.fixture
def mock(start_mock):
    return start_mock()


@pytest.fixture
def start_proxy(pki):
    """Starts stproxy; by default trusting the test CA. Checks a clean exit."""
    started = []

    def start(upstream, env=None, trust=True, config_text=None):
        full = {}
        if trust:
            full["STPROXY_UPSTREAM_CA"] = pki.ca
        full.update(env or {})
        proxy = Proxy(upstream, full, config_text=config_text)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        code = proxy.stop()
        assert code == 0, f"stproxy exited with {code}:\n{proxy.output()}"
