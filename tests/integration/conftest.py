"""pytest fixtures: a test CA per session, a fresh mock and proxy per test."""
import os
import shutil
import tempfile

import pytest

from harness import REDIS_SERVER, Mock, Pki, Proxy, Redis, STMOCK, STPROXY


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
        # Budgets out of the way unless a test is about them (test_throttle
        # sets its own): the other suites poll far faster than 12/min/device.
        full = {"STPROXY_BUDGET": "100000/1s", "STPROXY_DEVICE_BUDGET": "100000/1s"}
        if trust:
            full["STPROXY_UPSTREAM_CA"] = pki.ca
        full.update(env or {})
        proxy = Proxy(upstream, full, config_text=config_text)
        started.append(proxy)
        return proxy

    yield start
    failures = []
    for proxy in started:
        code = proxy.stop()
        if code != 0 and not getattr(proxy, "killed", False):
            failures.append(f"stproxy exited with {code}:\n{proxy.output()}")
    assert not failures, "\n".join(failures)


@pytest.fixture
def start_redis():
    """Starts real redis-servers on free loopback ports; all stopped at teardown."""
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip(f"{REDIS_SERVER} is not installed (Debian package redis-server)")
    started = []

    def start(**kwargs):
        server = Redis(**kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis(start_redis):
    return start_redis()


class StoreEnv(dict):
    """The proxy environment for one cache store; .name is "embedded" or
    "redis", .redis the server (None for the embedded store)."""

    def __init__(self, name, redis_server=None):
        super().__init__({"STPROXY_REDIS": redis_server.url} if redis_server else {})
        self.name = name
        self.redis = redis_server


@pytest.fixture(params=["embedded", "redis"])
def store(request):
    """Runs a test once per cache store: the env for start_proxy, {} for the
    embedded store and {"STPROXY_REDIS": url} with a fresh Redis. List it
    before start_proxy so that the proxy stops before its Redis does."""
    if request.param == "redis":
        return StoreEnv("redis", request.getfixturevalue("start_redis")())
    return StoreEnv("embedded")
