"""Issue 5: an OAuth2 credential the proxy keeps alive, against the mock's
token endpoint (bench/mock/mock_oauth.c).

The proxy holds an OAuth2 app's tokens as its shared credential: clients use
their client keys, the proxy puts the current access token upstream,
refreshes it before it expires and at once on a 401, one refresh at a time
(across processes sharing Redis), and stores every rotated refresh token
(single-use) in STPROXY_STATE_DIR before using the new access token. A dead
credential (invalid_grant, three failed refreshes, or a static token the
upstream keeps rejecting) shows in /readyz, the log, a metric, and a 503
CredentialNeedsReauthorization to clients. `stproxy auth` does the one-time
authorisation.

What the mock offers these tests: --oauth-client ID:SECRET; POST /config
access_ttl_ms, token_latency_ms, token_fail; POST /oauth/issue, /oauth/revoke,
/oauth/expire; GET /oauth/tokens; /counters "oauth" (refreshes,
refreshes_by_token, invalid_grant, ...); access tokens counted by_token as
"oauth:<client_id>".
"""
import http.client
import os
import queue
import random
import re
import stat
import subprocess
import tempfile
import threading
import time
import urllib.parse

import pytest

from harness import STPROXY, cache_env, free_port, wait_for

CLIENT_ID = "stproxy-oauth-app-4e2a"
CLIENT_SECRET = "oauth-client-secret-9d81c3f7"
KEY = "ha-key-oauth-71c2d9e4b5a6"
KEYS = f"homeassistant:{KEY}"
SCOPE = "r:devices:* x:devices:* r:locations:*"
TENANT = f"oauth:{CLIENT_ID}"  # how the mock counts the app's access tokens by_token
# What a dead OAuth2 credential's reason should say, in /readyz and the log.
REAUTH = re.compile(r"re-?authori[sz]|invalid_grant", re.I)
# ... and a static token's (it cannot be re-authorised, only replaced).
REJECTED = re.compile(r"re-?authori[sz]|invalid_grant|reject|expired|401|new token", re.I)
# Status reads straight through to the upstream, so every poll uses the access token.
NO_STATUS_CACHE = cache_env(DEVICE_STATUS="0")


# ---- helpers --------------------------------------------------------------------------------

def start_oauth_mock(start_mock, **config):
    """A mock with the test's OAuth app registered and config (POST /config) applied."""
    mock = start_mock(extra=["--oauth-client", f"{CLIENT_ID}:{CLIENT_SECRET}"])
    if config:
        mock.configure(**config)
    return mock


def issue(mock):
    """A fresh refresh token for the app, as if someone had authorised it."""
    status, doc = mock.admin("POST", f"/oauth/issue?client_id={CLIENT_ID}")
    assert status == 200, doc
    return doc["refresh_token"]


def oauth_env(mock, state_dir, refresh_token=None, **extra):
    env = {"STPROXY_OAUTH_CLIENT_ID": CLIENT_ID,
           "STPROXY_OAUTH_CLIENT_SECRET": CLIENT_SECRET,
           "STPROXY_OAUTH_TOKEN_URL": f"{mock.origin}/oauth/token",
           "STPROXY_STATE_DIR": str(state_dir),
           "STPROXY_CLIENT_KEYS": KEYS}
    if refresh_token is not None:
        env["STPROXY_OAUTH_REFRESH_TOKEN"] = refresh_token
    env.update(extra)
    return env


def oauth_counters(mock):
    return mock.counters()["oauth"]


def reused(oauth):
    """Refresh tokens presented more than once: each is single-use, so a
    second use means the proxy lost track of a rotation."""
    return {token: n for token, n in oauth["refreshes_by_token"].items() if n > 1}


def mock_tokens(mock):
    return mock.admin("GET", "/oauth/tokens")[1]


def live_refresh_tokens(mock):
    return [t["token"] for t in mock_tokens(mock)["refresh_tokens"] if t["state"] == "live"]


def all_issued_secrets(mock):
    """Every code, refresh token and access token the mock ever issued."""
    doc = mock_tokens(mock)
    return [t["token"] for kind in ("codes", "refresh_tokens", "access_tokens") for t in doc[kind]]


def get(proxy, path, timeout=15):
    return proxy.request("GET", path, token=KEY, timeout=timeout)


def first_device(proxy):
    resp = get(proxy, "/devices")
    assert resp.status == 200, f"a client request with the OAuth credential failed: {resp.body!r}"
    return resp.json()["items"][0]["deviceId"]


def ok_within(proxy, path, seconds):
    """Asks until a 200 or the deadline; (the 200 Response or None, what was seen)."""
    deadline = time.monotonic() + seconds
    seen = []
    while True:
        left = deadline - time.monotonic()
        try:
            resp = get(proxy, path, timeout=max(left, 0.5) + 1)
            if resp.status == 200:
                return resp, seen
            seen.append((resp.status, resp.body[:160]))
        except OSError as exc:
            seen.append(repr(exc))
        if time.monotonic() >= deadline:
            return None, seen
        time.sleep(0.05)


def poll(proxy, path, seconds, interval=0.1):
    """Polls path for seconds; returns [(t, status, body)]."""
    results = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        t = time.monotonic() - started
        try:
            resp = get(proxy, path, timeout=10)
            results.append((round(t, 2), resp.status, resp.body[:160]))
        except OSError as exc:
            results.append((round(t, 2), None, repr(exc)))
        time.sleep(interval)
    return results


def errors_of(results):
    return [r for r in results if r[1] != 200]


def regular_files(directory):
    return sorted(e.path for e in os.scandir(directory) if e.is_file(follow_symlinks=False))


def assert_state_dir(state_dir, token=None, exactly_one=True, timeout=3.0):
    """The durable state: (exactly) one regular file, mode 0600, no file any
    other user can read, and token (the mock's live refresh token) stored.
    Waits a little for a rotation in flight to land."""
    def check():
        files = regular_files(state_dir)
        problems = []
        if exactly_one and len(files) != 1:
            problems.append(f"expected exactly one regular file in the state dir, found {files}")
        for path in files:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode != 0o600:
                problems.append(f"{os.path.basename(path)} has mode {oct(mode)}, not 0600: "
                                "the refresh token is a secret")
        if token is not None:
            holders = [p for p in files if token in open(p, errors="replace").read()]
            if not holders:
                problems.append("the live refresh token is in no file of the state dir: a "
                                "restart would lose the credential")
        return problems

    deadline = time.monotonic() + timeout
    problems = check()
    while problems and time.monotonic() < deadline:
        time.sleep(0.05)
        problems = check()
    assert not problems, "; ".join(problems)


def assert_credential_error(resp, when=""):
    """A 503 in the API's error shape saying the credential needs re-authorisation."""
    prefix = f"{when}: " if when else ""
    assert resp.status == 503, (
        f"{prefix}a dead credential must give clients 503 CredentialNeedsReauthorization, "
        f"got {resp.status} {resp.body[:300]!r}")
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    doc = resp.json()
    assert set(doc) == {"requestId", "error"} and doc["requestId"], doc
    assert doc["error"]["code"] == "CredentialNeedsReauthorization", doc
    assert re.search(r"authori[sz]|stproxy auth|invalid_grant|reject|expired",
                     doc["error"]["message"], re.I), \
        f"{prefix}the message should explain what is wrong and what to do: {doc}"
    assert doc["error"]["details"] == [], doc


def wait_not_ready(proxy, timeout=10):
    """Waits for /readyz 503 and returns its JSON body."""
    def failed():
        status, doc = proxy.readyz()
        return (status, doc) if status == 503 else None
    try:
        _, doc = wait_for(failed, timeout=timeout, what="/readyz 503")
    except TimeoutError:
        raise AssertionError(f"/readyz should answer 503 once the credential is dead; it says "
                             f"{proxy.readyz()}") from None
    return doc


def assert_reports_dead_credential(proxy, doc, reason=REAUTH):
    """/readyz's body, the metric and health for a dead credential."""
    assert isinstance(doc, dict), f"/readyz should answer JSON, got {doc!r}"
    assert reason.search(str(doc.get("credential", ""))), \
        f"/readyz's \"credential\" field should say why the credential is dead: {doc}"
    assert proxy.metric("stproxy_credential_failed") == 1, \
        "stproxy_credential_failed should be 1 while the credential is dead"
    assert proxy.admin("/healthz")[0] == 200, "a dead credential is not a dead process"
    assert proxy.proc.poll() is None, "the proxy must keep running"


def reauth_log_lines(proxy, reason=REAUTH):
    """Log lines (not access lines) that speak of re-authorisation."""
    return [line for line in proxy.output().splitlines()
            if reason.search(line) and "access client=" not in line]


def concurrent_gets(proxy, paths, timeout=20):
    """One request per path, all at once, each on its own connection (all
    open before any is sent). Returns a Response or an exception per path."""
    barrier = threading.Barrier(len(paths))
    results = [None] * len(paths)

    def worker(i):
        conn = proxy.connection(timeout)
        try:
            try:
                conn.connect()
            finally:
                barrier.wait(timeout=timeout)
            conn.request("GET", paths[i], headers={"Authorization": f"Bearer {KEY}"})
            resp = conn.getresponse()
            results[i] = (resp.status, resp.read())
        except Exception as exc:  # reported by the test
            results[i] = exc
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return results


# ---- refresh -------------------------------------------------------------------------------

def test_refreshes_before_expiry_while_a_client_polls(start_mock, start_proxy, tmp_path):
    mock = start_oauth_mock(start_mock, access_ttl_ms=3000)
    state = tmp_path / "state"
    proxy = start_proxy(mock.origin, env=oauth_env(mock, state, issue(mock), **NO_STATUS_CACHE))
    device = first_device(proxy)
    mock.reset()

    started = time.monotonic()
    results = poll(proxy, f"/devices/{device}/status", 15)
    elapsed = time.monotonic() - started

    errors = errors_of(results)
    assert not errors, (f"the client saw {len(errors)} errors of {len(results)} polls while the "
                        f"proxy refreshed a 3 s token: {errors[:5]}")
    counters = mock.counters()
    oauth = counters["oauth"]
    expected = elapsed / 2.7  # refreshed at 90% of each 3 s lifetime
    assert abs(oauth["refreshes"] - expected) <= 1, (
        f"in {elapsed:.1f} s a 3 s access token should be refreshed once per expiry, about "
        f"{expected:.1f} times; the mock counted {oauth['refreshes']} ({oauth})")
    assert not reused(oauth), f"refresh tokens used more than once: {reused(oauth)}"
    assert oauth["invalid_grant"] == 0, oauth
    assert counters["by_status"].get("401", 0) == 0, (
        "the proxy refreshes before the token expires, so the upstream should never see an "
        f"expired token: {counters['by_status']}")
    assert counters["by_token"] == {TENANT: len(results)}, (
        "every poll should have gone upstream once, with the app's current access token: "
        f"{counters['by_token']} for {len(results)} polls")
    assert proxy.metric("stproxy_oauth_refreshes_total") >= oauth["refreshes"]
    assert proxy.metric("stproxy_oauth_refresh_failures_total") == 0
    assert proxy.metric("stproxy_credential_failed") == 0
    assert proxy.readyz()[0] == 200
    live = live_refresh_tokens(mock)
    assert len(live) == 1, f"one live refresh token is expected after rotations: {live}"
    assert_state_dir(state, live[0])


def test_concurrent_requests_with_an_expired_token_share_one_refresh(start_mock, start_proxy,
                                                                     tmp_path):
    mock = start_oauth_mock(start_mock)  # an hour's lifetime: no refresh of its own
    proxy = start_proxy(mock.origin,
                        env=oauth_env(mock, tmp_path / "state", issue(mock), **NO_STATUS_CACHE))
    device = first_device(proxy)
    status, doc = mock.admin("POST", "/oauth/expire")
    assert status == 200 and doc["expired"] >= 1, doc
    mock.reset()

    # 50 different requests (no coalescing), all meeting the expired token upstream
    paths = [f"/devices/{device}/status?poll={i}" for i in range(50)]
    results = concurrent_gets(proxy, paths)

    failures = [(paths[i], r if isinstance(r, Exception) else (r[0], r[1][:200]))
                for i, r in enumerate(results)
                if isinstance(r, Exception) or r[0] != 200]
    assert not failures, (f"{len(failures)} of 50 requests failed while the token was refreshed "
                          f"(they should wait for the refresh): {failures[:5]}")
    oauth = oauth_counters(mock)
    assert oauth["refreshes"] == 1 and oauth["token_requests"] == 1, (
        f"50 requests meeting one expired token should make exactly one refresh: {oauth}")
    assert not reused(oauth) and oauth["invalid_grant"] == 0, oauth
    assert mock.counters()["by_status"].get("200", 0) >= 50


def test_a_failed_refresh_is_retried(start_mock, start_proxy, tmp_path):
    mock = start_oauth_mock(start_mock)
    proxy = start_proxy(mock.origin,
                        env=oauth_env(mock, tmp_path / "state", issue(mock), **NO_STATUS_CACHE))
    device = first_device(proxy)
    mock.reset()
    mock.configure(token_fail=1)
    mock.admin("POST", "/oauth/expire")
    resp, seen = ok_within(proxy, f"/devices/{device}/status", 10)
    assert resp is not None, (f"one failed refresh (503 from the token endpoint) should be "
                              f"retried and the client served; saw {seen}")
    assert proxy.metric("stproxy_oauth_refresh_failures_total") >= 1
    assert proxy.metric("stproxy_credential_failed") == 0, "one failure is not a dead credential"
    assert proxy.readyz()[0] == 200
    oauth = oauth_counters(mock)
    assert oauth["failed"] == 1 and oauth["refreshes"] == 1 and not reused(oauth), oauth


def test_three_failed_refreshes_need_reauthorization(start_mock, start_proxy, tmp_path):
    mock = start_oauth_mock(start_mock)
    proxy = start_proxy(mock.origin,
                        env=oauth_env(mock, tmp_path / "state", issue(mock), **NO_STATUS_CACHE))
    device = first_device(proxy)
    mock.configure(token_fail=1000)
    mock.admin("POST", "/oauth/expire")
    try:
        get(proxy, f"/devices/{device}/status", timeout=20)
    except OSError:
        pass  # what this first request gets is not the point; what follows is
    doc = wait_not_ready(proxy, timeout=30)
    assert_reports_dead_credential(proxy, doc)
    assert_credential_error(get(proxy, f"/devices/{device}/status"),
                            "after three failed refreshes")
    assert proxy.metric("stproxy_oauth_refresh_failures_total") >= 3
    assert oauth_counters(mock)["failed"] >= 3


# ---- durability ---------------------------------------------------------------------------

def test_stored_refresh_token_wins_over_the_configured_one(start_mock, start_proxy, tmp_path):
    mock = start_oauth_mock(start_mock)
    state = tmp_path / "state"
    initial = issue(mock)
    env = oauth_env(mock, state, initial)
    first = start_proxy(mock.origin, env=env)
    assert get(first, "/locations").status == 200
    assert first.stop() == 0
    live = live_refresh_tokens(mock)
    assert len(live) == 1 and live[0] != initial, "the proxy should have rotated the initial token"
    assert_state_dir(state, live[0])
    # the configured initial token is used up; the stored one must be taken
    second = start_proxy(mock.origin, env=env)
    resp, seen = ok_within(second, "/devices", 5)
    assert resp is not None, (f"restarted with a used-up initial token configured, the proxy "
                              f"should use the stored one; saw {seen}")
    oauth = oauth_counters(mock)
    assert oauth["invalid_grant"] == 0, \
        f"the proxy presented the used-up configured token instead of the stored one: {oauth}"
    assert not reused(oauth), oauth


def test_oauth_settings_from_the_config_file(start_mock, start_proxy, tmp_path):
    mock = start_oauth_mock(start_mock)
    text = (f"oauth_client_id = {CLIENT_ID}\n"
            f"oauth_client_secret = {CLIENT_SECRET}\n"
            f"oauth_refresh_token = {issue(mock)}\n"
            f"oauth_token_url = {mock.origin}/oauth/token\n"
            f"state_dir = {tmp_path / 'state'}\n"
            f"client_keys = {KEYS}\n")
    proxy = start_proxy(mock.origin, config_text=text)
    assert get(proxy, "/devices").status == 200
    assert set(mock.counters()["by_token"]) == {TENANT}


def test_kill_9_around_refreshes_never_loses_the_refresh_token(start_mock, start_proxy,
                                                               tmp_path):
    # Lifetime 1 s: a refresh about every 0.9 s. Token requests take 150 ms to reach the
    # mock's endpoint, which drops one whose client was killed meanwhile unread (so the
    # refresh token was not rotated behind the dead client's back).
    mock = start_oauth_mock(start_mock, access_ttl_ms=1000, token_latency_ms=150)
    state = tmp_path / "state"
    env = oauth_env(mock, state, **NO_STATUS_CACHE)
    proxy = start_proxy(mock.origin, env={**env, "STPROXY_OAUTH_REFRESH_TOKEN": issue(mock)})
    device = first_device(proxy)
    path = f"/devices/{device}/status"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    history = []
    started = time.monotonic()

    for i in range(12):
        stop = threading.Event()

        def keep_polling(p=proxy):
            while not stop.is_set():
                try:
                    get(p, path, timeout=3)
                except OSError:
                    return
                time.sleep(0.03)

        poller = threading.Thread(target=keep_polling, daemon=True)
        poller.start()
        if i % 3 == 2:
            # kill while a refresh is in flight: right after it reaches the mock
            before = oauth_counters(mock)["token_requests"]
            wait_for(lambda: oauth_counters(mock)["token_requests"] > before, timeout=3,
                     what="the next refresh")
            time.sleep(rng.uniform(0, 0.08))
            how = "mid-refresh"
        else:
            delay = rng.uniform(0, 1.5)
            time.sleep(delay)
            how = f"after {delay:.2f} s"
        proxy.kill()
        stop.set()
        poller.join(5)

        # restart without the initial token: only what the proxy stored counts now
        proxy = start_proxy(mock.origin, env=env)
        resp, seen = ok_within(proxy, path, 3)
        history.append((i, how, "ok" if resp else "FAILED"))
        if resp is None:
            raise AssertionError(
                f"iteration {i} (killed {how}, seed {seed}): after the restart no request "
                f"succeeded within 3 s; saw {seen[-3:]}; /readyz {proxy.readyz()}; mock "
                f"{oauth_counters(mock)}; history {history}; log tail:\n"
                f"{proxy.output()[-2000:]}")

    oauth = oauth_counters(mock)
    assert oauth["invalid_grant"] == 0, (
        f"a kill -9 left the proxy with a used-up refresh token (seed {seed}, {history}): {oauth}")
    assert not reused(oauth), f"refresh tokens used twice (seed {seed}): {reused(oauth)}"
    assert oauth["abandoned"] >= 1, (
        "no kill landed while a refresh was in flight, so the test did not exercise what it is "
        f"for: {oauth}")
    assert proxy.readyz()[0] == 200
    live = live_refresh_tokens(mock)
    assert len(live) == 1, live
    # a kill may leave a temporary file behind, but no file any other user can read
    assert_state_dir(state, live[0], exactly_one=False)
    assert time.monotonic() - started < 40, "keep this test under 40 s"


# ---- failure -------------------------------------------------------------------------------

def test_revoked_refresh_token_needs_reauthorization(start_mock, start_proxy, tmp_path):
    mock = start_oauth_mock(start_mock)
    proxy = start_proxy(mock.origin,
                        env=oauth_env(mock, tmp_path / "state", issue(mock), **NO_STATUS_CACHE))
    device = first_device(proxy)
    status, doc = mock.admin("POST", "/oauth/revoke")  # refresh and access tokens alike
    assert status == 200 and doc["revoked"] >= 2, doc

    # upstream 401 -> refresh -> invalid_grant: the waiting request gets the clear 503
    assert_credential_error(get(proxy, f"/devices/{device}/status"),
                            "the request that met the revoked credential")
    doc = wait_not_ready(proxy)
    assert_reports_dead_credential(proxy, doc)
    assert proxy.metric("stproxy_oauth_refresh_failures_total") >= 1
    assert oauth_counters(mock)["invalid_grant"] >= 1

    said = reauth_log_lines(proxy)
    assert said, "the log should say that the credential needs re-authorisation"
    token_requests = oauth_counters(mock)["token_requests"]
    for n in range(3):
        assert_credential_error(get(proxy, f"/devices/{device}/status?n={n}"), "later requests")
    resp = proxy.request("POST", f"/devices/{device}/commands", token=KEY,
                         body=b'{"commands":[{"component":"main","capability":"switch",'
                              b'"command":"on"}]}')
    assert_credential_error(resp, "a command")
    time.sleep(0.5)
    assert reauth_log_lines(proxy) == said, \
        "the log should say it once, not once per request"
    assert oauth_counters(mock)["token_requests"] == token_requests, \
        "a refresh token refused with invalid_grant is dead: no more attempts with it"
    assert proxy.admin("/healthz")[0] == 200 and proxy.proc.poll() is None


def test_static_token_rejected_three_times_is_reported_the_same_way(start_mock, start_proxy):
    static = "expired-pat-0a1b2c3d4e5f"
    mock = start_mock(tokens=["the-only-valid-token"])  # the configured token is unknown
    proxy = start_proxy(mock.origin, env={"STPROXY_TOKEN": static, "STPROXY_CLIENT_KEYS": KEYS,
                                          **NO_STATUS_CACHE})
    devices = ["dev-a", "dev-b", "dev-c"]
    for d in devices:
        assert get(proxy, f"/devices/{d}/status").status != 200
    assert mock.counters()["by_status"].get("401") == 3, mock.counters()
    doc = wait_not_ready(proxy, timeout=5)
    assert_reports_dead_credential(proxy, doc, REJECTED)
    assert_credential_error(get(proxy, "/devices/dev-d/status"),
                            "after the upstream rejected the static token three times")
    said = reauth_log_lines(proxy, REJECTED)
    assert said, "the log should say the token is rejected and needs replacing"
    for n in range(3):
        assert_credential_error(get(proxy, f"/devices/dev-d/status?n={n}"), "later requests")
    assert reauth_log_lines(proxy, REJECTED) == said, "the log should say it once"
    assert static not in proxy.output()


def test_static_token_occasional_401_is_not_fatal(start_mock, start_proxy):
    static = "good-static-token-5e6f7a"
    mock = start_mock(tokens=[static])
    proxy = start_proxy(mock.origin, env={"STPROXY_TOKEN": static, "STPROXY_CLIENT_KEYS": KEYS,
                                          **NO_STATUS_CACHE})
    device = mock.device_ids(static)[0]
    path = f"/devices/{device}/status"
    for _ in range(2):
        mock.fail("status", status=401, count=2)
        assert get(proxy, path).status != 200
        assert get(proxy, path).status != 200
        assert get(proxy, path).status == 200, "the token works again"
    assert proxy.readyz()[0] == 200, "two 401s, a success, two 401s: not three in a row"
    assert proxy.metric("stproxy_credential_failed") == 0


# ---- processes sharing Redis ----------------------------------------------------------------

@pytest.mark.parametrize("layout", ["one state_dir", "a state_dir each"])
def test_two_processes_sharing_redis_refresh_once_between_them(start_mock, redis, start_proxy,
                                                               tmp_path, layout):
    mock = start_oauth_mock(start_mock, access_ttl_ms=3000)
    initial = issue(mock)
    dirs = ([tmp_path / "state"] * 2 if layout == "one state_dir"
            else [tmp_path / "host-a", tmp_path / "host-b"])
    env = [oauth_env(mock, d, initial, STPROXY_REDIS=redis.url, **NO_STATUS_CACHE) for d in dirs]
    # The first process is up and has rotated the initial token before the second starts
    # (test_two_processes_starting_together covers a simultaneous start).
    proxies = [start_proxy(mock.origin, env=env[0])]
    device = first_device(proxies[0])
    proxies.append(start_proxy(mock.origin, env=env[1]))
    # a status read goes upstream (a /devices list might come from the shared cache)
    resp, seen = ok_within(proxies[1], f"/devices/{device}/status", 5)
    assert resp is not None and oauth_counters(mock)["invalid_grant"] == 0, (
        "the second process, configured with the initial refresh token the first one has "
        f"already used, should take the stored tokens (Redis, or the shared state_dir) rather "
        f"than refresh with the used one (an OAuth server may revoke the whole grant when a "
        f"used refresh token comes back): {seen}; {oauth_counters(mock)}")
    mock.reset()

    results = [None, None]

    def run(i):
        results[i] = poll(proxies[i], f"/devices/{device}/status", 8, interval=0.1)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - started

    for i in range(2):
        errors = errors_of(results[i])
        assert not errors, f"process {i} gave its client errors: {errors[:5]}"
    oauth = oauth_counters(mock)
    expected = elapsed / 2.7
    assert abs(oauth["refreshes"] - expected) <= 1, (
        f"two processes sharing Redis should refresh once per expiry between them, about "
        f"{expected:.1f} times in {elapsed:.1f} s, not each on its own: {oauth}")
    assert not reused(oauth), f"refresh tokens used twice: {reused(oauth)}"
    assert oauth["invalid_grant"] == 0, oauth
    for p in proxies:
        assert p.readyz()[0] == 200


def test_two_processes_starting_together_refresh_once(start_mock, redis, start_proxy, tmp_path):
    mock = start_oauth_mock(start_mock)
    initial = issue(mock)
    env = oauth_env(mock, tmp_path / "state", initial, STPROXY_REDIS=redis.url)
    proxies = [None, None]
    errors = []

    def start(i):
        try:
            proxies[i] = start_proxy(mock.origin, env=env)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    for i, proxy in enumerate(proxies):
        resp, seen = ok_within(proxy, "/devices", 5)
        assert resp is not None, (
            f"process {i} of two started at once with the same initial refresh token failed: "
            f"{seen}; {oauth_counters(mock)}")
    oauth = oauth_counters(mock)
    assert oauth["invalid_grant"] == 0 and not reused(oauth), (
        "two processes sharing Redis that start together must not both refresh with the "
        f"initial token (the Redis lock must be held for the first refresh too): {oauth}")
    assert oauth["refreshes"] == 1, f"one refresh between them at start: {oauth}"


# ---- stproxy auth ---------------------------------------------------------------------------

class AuthCommand:
    """`stproxy auth` with stdin a pipe that stays open, stdout read by a thread."""

    URL = re.compile(r"^https://\S*/oauth/authorize\?\S+")

    def __init__(self, env):
        full = {k: v for k, v in os.environ.items() if not k.startswith("STPROXY_")}
        full.update(env)
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([STPROXY, "auth"], env=full, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err)
        self.lines = []
        self.queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.lines.append(line)
            self.queue.put(line)
        self.queue.put(None)

    def output(self):
        self.err.seek(0)
        return "\n".join(self.lines) + "\n--- stderr ---\n" + self.err.read().decode(
            "utf-8", "replace")

    def wait_for_url(self, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"stproxy auth printed no authorize URL in {timeout} s:\n"
                                     f"{self.output()}") from None
            if line is None:
                raise AssertionError(f"stproxy auth ended (status {self.proc.wait()}) without "
                                     f"printing the authorize URL:\n{self.output()}")
            match = self.URL.search(line.strip())
            if match:
                return match.group(0)

    def paste(self, text):
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def wait(self, timeout=15):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"stproxy auth did not finish within {timeout} s:\n"
                                 f"{self.output()}") from None
        self.reader.join(5)
        return code

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdin.close()
        self.err.close()


@pytest.fixture
def run_auth():
    started = []

    def run(env):
        cmd = AuthCommand(env)
        started.append(cmd)
        return cmd

    yield run
    for cmd in started:
        cmd.close()


def auth_env(mock, pki, state_dir, redirect):
    return {**oauth_env(mock, state_dir),
            "STPROXY_UPSTREAM": mock.origin,
            "STPROXY_UPSTREAM_CA": pki.ca,
            "STPROXY_OAUTH_REDIRECT_URI": redirect,
            "STPROXY_OAUTH_SCOPE": SCOPE}


def check_authorize_url(url, redirect):
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query.get("client_id") == [CLIENT_ID], url
    assert query.get("response_type") == ["code"], url
    assert query.get("redirect_uri") == [redirect], url
    assert query.get("scope") == [SCOPE], url
    assert query.get("state") and query["state"][0], f"the URL needs a state: {url}"
    return query["state"][0]


def approve_in_browser(mock, url):
    """What the browser does at the authorize URL: the mock stands in for the
    user approving and redirects. Returns the Location."""
    parts = urllib.parse.urlsplit(url)
    conn = mock.api_connection()
    conn.request("GET", parts.path + "?" + parts.query)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 302, (f"the mock refused the authorize URL {url}: {resp.status} "
                                f"{body[:300]!r}")
    return resp.headers["Location"]


def follow_redirect(location, timeout=5):
    """The browser following the redirect to the loopback listener."""
    parts = urllib.parse.urlsplit(location)
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            conn.request("GET", parts.path + "?" + parts.query)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace")
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on the redirect URI {location}") from None
            time.sleep(0.1)
        finally:
            conn.close()


def check_authorised(mock, auth, state, start_proxy):
    """After `stproxy auth` exited 0: the code was exchanged, the refresh
    token stored privately and not printed, and a proxy started on the same
    state_dir with no refresh token configured works."""
    oauth = oauth_counters(mock)
    assert oauth["code_exchanges"] == 1, f"stproxy auth should exchange the code once: {oauth}"
    live = live_refresh_tokens(mock)
    assert len(live) == 1, live
    assert_state_dir(state, live[0])
    out = auth.output()
    for secret in [CLIENT_SECRET] + [t["token"] for t in mock_tokens(mock)["refresh_tokens"]] + \
            [t["token"] for t in mock_tokens(mock)["access_tokens"]]:
        assert secret not in out, "stproxy auth must not print a token or the client secret"
    proxy = start_proxy(mock.origin, env=oauth_env(mock, state))  # the stored token only
    resp, seen = ok_within(proxy, "/devices", 5)
    assert resp is not None, f"a proxy on the state dir stproxy auth wrote should work: {seen}"
    assert set(mock.counters()["by_token"]) == {TENANT}


def test_auth_through_the_loopback_redirect(start_mock, start_proxy, run_auth, pki, tmp_path):
    mock = start_oauth_mock(start_mock)
    state = tmp_path / "state"
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    auth = run_auth(auth_env(mock, pki, state, redirect))
    url = auth.wait_for_url()
    assert url.startswith("https://") and "/oauth/authorize?" in url, url
    sent_state = check_authorize_url(url, redirect)

    location = approve_in_browser(mock, url)
    assert location.startswith(redirect + "?"), location
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["state"] == [sent_state]
    status, page = follow_redirect(location)
    assert status == 200, f"the redirect listener should show success, got {status}: {page}"
    assert re.search(r"success|authori[sz]ed|complete|done|worked|you can close", page, re.I), \
        f"the page should tell the user it worked: {page[:300]}"

    code = auth.wait()
    assert code == 0, f"stproxy auth exited {code}:\n{auth.output()}"
    after_url = "\n".join(auth.lines[auth.lines.index(next(
        line for line in auth.lines if url in line)) + 1:])
    assert re.search(r"success|authori[sz]ed|stored|saved|done", after_url, re.I), \
        f"stproxy auth should print a success line:\n{auth.output()}"
    check_authorised(mock, auth, state, start_proxy)


@pytest.mark.parametrize("pasted", ["code", "redirected URL"])
def test_auth_with_a_pasted_code(start_mock, start_proxy, run_auth, pki, tmp_path, pasted):
    mock = start_oauth_mock(start_mock)
    state = tmp_path / "state"
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    auth = run_auth(auth_env(mock, pki, state, redirect))
    url = auth.wait_for_url()
    check_authorize_url(url, redirect)
    # the browser ran elsewhere: the user copies what it ended on
    location = approve_in_browser(mock, url)
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["code"][0]
    auth.paste(code if pasted == "code" else location)
    status = auth.wait()
    assert status == 0, f"stproxy auth exited {status} after the {pasted} was pasted:\n" \
                        f"{auth.output()}"
    check_authorised(mock, auth, state, start_proxy)


# ---- secrets -------------------------------------------------------------------------------

def test_no_token_in_the_log_or_metrics(start_mock, start_proxy, tmp_path):
    mock = start_oauth_mock(start_mock, access_ttl_ms=2000)
    initial = issue(mock)
    proxy = start_proxy(mock.origin, env=oauth_env(mock, tmp_path / "state", initial,
                                                   STPROXY_LOG_LEVEL="debug", **NO_STATUS_CACHE))
    device = first_device(proxy)
    assert not errors_of(poll(proxy, f"/devices/{device}/status", 4.5, interval=0.2))
    assert oauth_counters(mock)["refreshes"] >= 2, "the test needs a few rotations to look at"
    # and the failure path: a 401 upstream, then invalid_grant
    mock.admin("POST", "/oauth/revoke")
    get(proxy, f"/devices/{device}/status")
    wait_not_ready(proxy)
    _, metrics = proxy.admin("/metrics")
    _, ready = proxy.admin("/readyz")
    assert proxy.stop() == 0
    log = proxy.output()
    secrets = all_issued_secrets(mock) + [CLIENT_SECRET, KEY, initial]
    assert len(secrets) > 8
    for secret in secrets:
        assert secret not in log, f"a token or secret leaked into the log: {secret[:6]}..."
        assert secret not in metrics, f"a token or secret leaked into /metrics: {secret[:6]}..."
        assert secret not in ready, f"a token or secret leaked into /readyz: {secret[:6]}..."
