"""Caching and coalescing (issue 3), against the real proxy, the mock API over
TLS and, for the "redis" half of the store-parametrised tests, a real
redis-server. Tests that take the `store` fixture run twice, once with the
embedded store (no STPROXY_REDIS) and once with Redis: the same contract holds
for both.

Time-based tests use policies of a second or two; each waits only for the
boundary it checks."""
import json
import re
import time

import pytest

from harness import cache_env, concurrent_requests, sha256_hex, sleep_until, wait_for

TOKEN = "pat-cache-0001"
TOKEN_B = "pat-cache-0002"
COMMAND_ON = json.dumps({"commands": [{"component": "main", "capability": "switch",
                                       "command": "on", "arguments": []}]})
JSON = {"Content-Type": "application/json"}


# ---- helpers -------------------------------------------------------------------------------

def get(proxy, path, token=TOKEN, **kwargs):
    return proxy.request("GET", path, token=token, **kwargs)


def age_of(resp):
    """The Age header as an int; fails the test if it is missing or not an integer."""
    age = resp.headers.get("Age")
    assert age is not None, f"a cached answer ({resp.cache}) must carry Age"
    assert re.fullmatch(r"\d+", age), f"Age must be whole seconds, got {age!r}"
    return int(age)


def device_ids(proxy, token=TOKEN):
    resp = get(proxy, "/devices", token=token)
    assert resp.status == 200, resp.body
    return [d["deviceId"] for d in resp.json()["items"]]


def switch_value(resp):
    doc = resp.json()
    # device status, component status and capability status nest differently
    if "components" in doc:
        doc = doc["components"]["main"]
    if "switch" in doc and "switch" in doc["switch"]:
        doc = doc["switch"]
    return doc["switch"]["value"]


def assert_api_error(resp, status, what):
    assert resp.status == status, f"{what}: expected {status}, got {resp.status} {resp.body!r}"
    doc = resp.json()
    assert set(doc) >= {"requestId", "error"}, f"{what}: not the API error shape: {doc}"
    assert doc["error"].get("code") and doc["error"].get("message"), \
        f"{what}: error needs a code and a message: {doc}"
    assert doc["error"].get("details") == [], f"{what}: details must be []: {doc}"


def metric_exposed(proxy, name):
    text = proxy.admin("/metrics")[1]
    return re.search(rf"^{re.escape(name)}(\{{[^}}]*\}})? ", text, re.M) is not None


# ---- fresh, stale, refresh, expiry ---------------------------------------------------------

def test_miss_hit_stale_one_refresh_then_miss(mock, store, start_proxy):
    """FRESH=1s, STALE=1s: MISS, then HIT with Age; past FRESH a STALE answer at
    once and exactly one background refresh however many STALE answers went
    out; then HIT again; an entry left alone past FRESH+STALE is a MISS."""
    proxy = start_proxy(mock.origin, env={**store, **cache_env(LOCATIONS="1s,1s",
                                                               DEVICES="1s,1s")})
    t0 = time.monotonic()
    first = get(proxy, "/locations")
    assert first.status == 200, first.body
    assert first.cache == "MISS", f"first GET must be a MISS, got {first.cache}"
    hit = get(proxy, "/locations")
    assert hit.cache == "HIT", f"a repeat within FRESH must be a HIT, got {hit.cache}"
    assert hit.body == first.body, "a HIT answers the cached body"
    assert 0 <= age_of(hit) <= 1, f"Age of a just-cached entry, got {age_of(hit)}"
    assert mock.calls("/locations") == 1, "a HIT must not reach the upstream"
    other = get(proxy, "/devices")  # left alone until past FRESH+STALE
    assert other.cache == "MISS"

    # Past FRESH: the refresh will take 300 ms upstream, so several STALE answers go out
    # while it runs, each at once.
    mock.set_latency(300)
    sleep_until(t0 + 1.2)
    stale = [get(proxy, "/locations") for _ in range(4)]
    for resp in stale:
        assert resp.status == 200 and resp.cache == "STALE", \
            f"past FRESH within STALE: expected a STALE 200, got {resp.status} {resp.cache}"
        assert resp.body == first.body, "a STALE answer is the cached body"
        assert resp.elapsed < 0.25, \
            f"a STALE answer is immediate, not after the refresh: took {resp.elapsed:.3f}s"
        assert 1 <= age_of(resp) <= 2, f"Age past FRESH, got {age_of(resp)}"
    try:
        wait_for(lambda: mock.calls("/locations") >= 2, timeout=3, what="the background refresh")
    except TimeoutError:
        pytest.fail("no background refresh reached the upstream after STALE answers")
    time.sleep(0.4)
    assert mock.calls("/locations") == 2, \
        f"{len(stale)} STALE answers must cause exactly one refresh, the mock saw " \
        f"{mock.calls('/locations') - 1}"
    after = get(proxy, "/locations")
    assert after.cache == "HIT", f"after the refresh the entry is fresh again, got {after.cache}"
    assert mock.calls("/locations") == 2

    sleep_until(t0 + 2.3)
    expired = get(proxy, "/devices")
    assert expired.cache == "MISS", \
        f"past FRESH+STALE an entry must not be served, got {expired.cache}"
    assert mock.calls("/devices") == 2


def test_policy_zero_means_not_cached(mock, store, start_proxy):
    proxy = start_proxy(mock.origin, env={**store, **cache_env(LOCATIONS="0")})
    answers = [get(proxy, "/locations") for _ in range(2)]
    assert all(r.status == 200 for r in answers)
    assert "HIT" not in [r.cache for r in answers], "a class with policy 0 is never a HIT"
    assert mock.calls("/locations") == 2, "a class with policy 0 goes upstream every time"


# ---- cache keys ----------------------------------------------------------------------------

def test_query_order_and_array_forms_share_an_entry(mock, store, start_proxy):
    proxy = start_proxy(mock.origin, env={**store, **cache_env(DEVICES="30s,30s")})
    first = get(proxy, "/devices?max=50&capability=switch&capability=switchLevel")
    assert first.status == 200 and first.cache == "MISS"
    same = [
        "/devices?capability=switch&max=50&capability=switchLevel",  # parameters reordered
        "/devices?capability=switch,switchLevel&max=50",  # comma-joined array
    ]
    for path in same:
        resp = get(proxy, path)
        assert resp.cache == "HIT", f"{path} is the same query as the first; got {resp.cache}"
        assert resp.body == first.body
    assert mock.calls("/devices") == 1, "equivalent queries must make one upstream call"
    different = get(proxy, "/devices?max=50&capability=switch")
    assert different.cache == "MISS", "another query is another entry"
    assert mock.calls("/devices") == 2


def test_accept_values_are_separate_entries(mock, store, start_proxy):
    proxy = start_proxy(mock.origin, env={**store, **cache_env(LOCATIONS="30s,30s")})
    a = {"Accept": "application/json"}
    b = {"Accept": "application/vnd.smartthings+json;v=20170916"}
    assert get(proxy, "/locations", headers=a).cache == "MISS"
    assert get(proxy, "/locations", headers=b).cache == "MISS", \
        "another Accept value must not be answered from the first entry"
    assert get(proxy, "/locations", headers=a).cache == "HIT"
    assert get(proxy, "/locations", headers=b).cache == "HIT"
    assert mock.calls("/locations") == 2


def test_path_styles_are_separate_entries(mock, store, start_proxy):
    proxy = start_proxy(mock.origin, env={**store, **cache_env(LOCATIONS="30s,30s")})
    assert get(proxy, "/locations").cache == "MISS"
    assert get(proxy, "/v1/locations").cache == "MISS", "/v1/x and /x are different entries"
    assert get(proxy, "/locations").cache == "HIT"
    assert get(proxy, "/v1/locations").cache == "HIT"
    assert mock.calls("/locations") == 1 and mock.calls("/v1/locations") == 1


def test_tokens_never_share_entries(mock, store, start_proxy):
    """Pass-through: two tokens asking the same paths each get their own devices
    (the mock gives every token its own ids), from the upstream and from cache."""
    proxy = start_proxy(mock.origin, env={**store, **cache_env("30s,30s")})
    first_a = get(proxy, "/devices", token=TOKEN)
    first_b = get(proxy, "/devices", token=TOKEN_B)
    assert first_a.cache == "MISS"
    assert first_b.cache == "MISS", "another token's entry must never answer a request"
    ids_a = {d["deviceId"] for d in first_a.json()["items"]}
    ids_b = {d["deviceId"] for d in first_b.json()["items"]}
    assert ids_a and ids_b and not ids_a & ids_b, "the mock gives each token its own devices"
    for _ in range(2):
        again_a = get(proxy, "/devices", token=TOKEN)
        again_b = get(proxy, "/devices", token=TOKEN_B)
        assert again_a.cache == "HIT" and again_b.cache == "HIT"
        assert {d["deviceId"] for d in again_a.json()["items"]} == ids_a, \
            "token A got devices that are not its own from cache"
        assert {d["deviceId"] for d in again_b.json()["items"]} == ids_b, \
            "token B got devices that are not its own from cache"
    assert mock.counters()["by_token"] == {TOKEN: 1, TOKEN_B: 1}

    # A's cached status is not B's: B asking for A's device goes upstream and gets 404.
    device_a = sorted(ids_a)[0]
    assert get(proxy, f"/devices/{device_a}/status", token=TOKEN).status == 200
    assert get(proxy, f"/devices/{device_a}/status", token=TOKEN).cache == "HIT"
    other = get(proxy, f"/devices/{device_a}/status", token=TOKEN_B)
    assert other.cache != "HIT" and other.status == 404, \
        f"token B must not read token A's cached status: got {other.status} {other.cache}"


# ---- what is cached ------------------------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403, 429, 500, 503])
def test_errors_are_not_cached(mock, store, start_proxy, status):
    proxy = start_proxy(mock.origin, env={**store, **cache_env("30s,30s")})
    mock.fail("status", status=status, count=1)
    failed = get(proxy, "/locations")
    assert failed.status == status, f"the upstream's {status} passes through: {failed.body!r}"
    assert failed.cache != "HIT"
    ok = get(proxy, "/locations")
    assert ok.status == 200, f"a {status} must not be cached: the next GET got {ok.status}"
    assert ok.cache == "MISS", f"after a {status} the next GET goes upstream, got {ok.cache}"
    assert mock.calls("/locations") == 2
    assert get(proxy, "/locations").cache == "HIT", "the 200 that followed is cached"


def test_not_found_is_cached_briefly(mock, store, start_proxy):
    proxy = start_proxy(mock.origin, env={**store, **cache_env("30s,30s"),
                                          "STPROXY_CACHE_NOT_FOUND": "1s"})
    path = "/devices/no-such-device/status"
    t0 = time.monotonic()
    assert get(proxy, path).status == 404
    again = get(proxy, path)
    assert again.status == 404 and again.cache == "HIT", \
        f"a 404 is cached for STPROXY_CACHE_NOT_FOUND, got {again.status} {again.cache}"
    assert mock.calls(path) == 1
    sleep_until(t0 + 1.3)
    later = get(proxy, path)
    assert later.status == 404 and later.cache != "HIT", \
        f"a 404 is cached only briefly: past 1s got {later.cache}"
    wait_for(lambda: mock.calls(path) == 2, timeout=2, what="the 404 to be asked again")


def test_post_is_bypass_and_never_cached(mock, store, start_proxy):
    proxy = start_proxy(mock.origin, env={**store, **cache_env("30s,30s")})
    device = device_ids(proxy)[0]
    for _ in range(2):
        resp = proxy.request("POST", f"/devices/{device}/commands", token=TOKEN,
                             body=COMMAND_ON, headers=JSON)
        assert resp.status == 200, resp.body
        assert resp.cache == "BYPASS", f"a command is BYPASS, got {resp.cache}"
    assert mock.calls(f"/devices/{device}/commands", "POST") == 2, "every command goes upstream"


# ---- invalidation --------------------------------------------------------------------------

STATUS_PATHS = ("/devices/{d}/status", "/devices/{d}/components/main/status",
                "/devices/{d}/components/main/capabilities/switch/status")


def test_command_invalidates_that_devices_status(mock, store, start_proxy):
    """A successful command on d1 makes d1's status, component status and
    capability status (both path styles) MISSes showing the new value; d2's
    status, and another token's, stay HITs."""
    proxy = start_proxy(mock.origin, env={**store, **cache_env("30s,30s")})
    d1, d2 = device_ids(proxy)[:2]
    b0 = device_ids(proxy, TOKEN_B)[0]
    paths_d1 = [prefix + p.format(d=d1) for prefix in ("", "/v1") for p in STATUS_PATHS]
    paths_kept = [f"/devices/{d2}/status", f"/v1/devices/{d2}/status"]
    for path in paths_d1 + paths_kept:
        assert get(proxy, path).cache == "MISS"
        resp = get(proxy, path)
        assert resp.cache == "HIT", f"{path} should be cached before the command"
        assert switch_value(resp) == "off"
    assert get(proxy, f"/devices/{b0}/status", token=TOKEN_B).cache == "MISS"

    cmd = proxy.request("POST", f"/devices/{d1}/commands", token=TOKEN, body=COMMAND_ON,
                        headers=JSON)
    assert cmd.status == 200 and cmd.cache == "BYPASS"

    for path in paths_d1:
        resp = get(proxy, path)
        assert resp.cache == "MISS", \
            f"{path}: a command on the device must invalidate its cached status, got {resp.cache}"
        assert switch_value(resp) == "on", f"{path} must show the command's effect"
    for path in paths_kept:
        resp = get(proxy, path)
        assert resp.cache == "HIT", f"{path}: another device's status stays cached, got " \
                                    f"{resp.cache}"
    other = get(proxy, f"/devices/{b0}/status", token=TOKEN_B)
    assert other.cache == "HIT", "a command invalidates only its own credential's entries"


def test_scene_execution_invalidates_the_credentials_status(mock, store, start_proxy):
    proxy = start_proxy(mock.origin, env={**store, **cache_env("30s,30s")})
    devices = get(proxy, "/devices").json()["items"]
    scene = get(proxy, "/scenes").json()["items"][0]
    in_scene = [d["deviceId"] for d in devices if d["locationId"] == scene["locationId"]]
    assert in_scene, "the mock puts devices in every location"
    status_paths = [f"/devices/{d['deviceId']}/status" for d in devices]
    status_paths.append(f"/v1/devices/{in_scene[0]}/components/main/status")
    for path in status_paths + ["/locations"]:
        get(proxy, path)
        assert get(proxy, path).cache == "HIT", f"{path} should be cached before the scene"
    b0 = device_ids(proxy, TOKEN_B)[0]
    get(proxy, f"/devices/{b0}/status", token=TOKEN_B)

    run = proxy.request("POST", f"/scenes/{scene['sceneId']}/execute", token=TOKEN, body="{}",
                        headers=JSON)
    assert run.status == 200 and run.cache == "BYPASS", (run.status, run.cache, run.body)

    for path in status_paths:
        resp = get(proxy, path)
        assert resp.cache == "MISS", \
            f"{path}: a scene execution invalidates the credential's status entries, got " \
            f"{resp.cache}"
    for device in in_scene:
        assert switch_value(get(proxy, f"/devices/{device}/status")) == "on", \
            "the status after the scene shows its effect"
    assert get(proxy, "/locations").cache == "HIT", "a scene leaves non-status entries alone"
    assert get(proxy, f"/devices/{b0}/status", token=TOKEN_B).cache == "HIT", \
        "a scene invalidates only its own credential's entries"


# ---- coalescing ----------------------------------------------------------------------------

def test_200_concurrent_identical_gets_make_one_upstream_call(mock, store, start_proxy):
    proxy = start_proxy(mock.origin, env={**store, **cache_env(LOCATIONS="30s,30s")})
    latency = 0.4
    mock.set_latency(int(latency * 1000))
    results = concurrent_requests(proxy, "/locations", 200, token=TOKEN)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} of 200 requests failed, e.g. {errors[0]!r}"
    statuses = {r.status for r in results}
    assert statuses == {200}, f"all 200 must succeed, got statuses {statuses}"
    assert mock.calls("/locations") == 1, \
        f"200 identical concurrent misses must make one upstream call, made " \
        f"{mock.calls('/locations')}"
    assert len({r.body for r in results}) == 1, "every waiter gets the same body"
    slowest = max(r.elapsed for r in results)
    assert slowest < 2 * latency, \
        f"waiters must be answered when the one fetch completes ({latency}s upstream), " \
        f"the slowest took {slowest:.3f}s"
    assert proxy.metric("stproxy_coalesced_waiters_total") >= 150, \
        "most of the 200 joined the one fetch: stproxy_coalesced_waiters_total " \
        f"= {proxy.metric('stproxy_coalesced_waiters_total')}"


# ---- stale-if-error ------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["status", "reset", "hang"])
def test_stale_if_error_then_error_after_the_window(mock, store, start_proxy, fault):
    """Upstream failing past FRESH: STALE 200s within the window, also after the
    background refresh has failed; past FRESH+STALE the error in the API's shape
    (502, or 504 for an upstream that never answers)."""
    proxy = start_proxy(mock.origin, env={**store, **cache_env(LOCATIONS="1s,1s"),
                                          "STPROXY_UPSTREAM_TIMEOUT": "500ms"})
    t0 = time.monotonic()
    first = get(proxy, "/locations")
    assert first.status == 200 and first.cache == "MISS"
    mock.fail(fault)
    sleep_until(t0 + 1.15)
    stale = get(proxy, "/locations")
    assert stale.status == 200 and stale.cache == "STALE", \
        f"upstream failing ({fault}) past FRESH: expected STALE 200, got {stale.status} " \
        f"{stale.cache}"
    assert stale.body == first.body
    assert stale.elapsed < 0.4, f"the stale answer must not wait for the upstream " \
                                f"({stale.elapsed:.3f}s)"
    time.sleep(0.6)  # the background refresh has failed by now (timeout 500 ms for a hang)
    again = get(proxy, "/locations")
    assert again.status == 200 and again.cache == "STALE", \
        f"after the refresh failed ({fault}), the stale entry is still served: " \
        f"got {again.status} {again.cache}"
    assert mock.calls("/locations") >= 2, "the proxy did try to refresh"

    sleep_until(t0 + 2.2)
    late = get(proxy, "/locations")
    if fault == "hang":
        assert_api_error(late, 504, "upstream hanging past the stale window")
    elif fault == "reset":
        assert_api_error(late, 502, "upstream resetting past the stale window")
    else:
        # The upstream's own 503 may pass through as it is, or be turned into a 502.
        assert late.status in (502, 503), \
            f"upstream answering 503 past the stale window: got {late.status}"
        assert_api_error(late, late.status, "upstream answering 503 past the stale window")
    assert late.cache != "STALE", "past FRESH+STALE nothing stale may be served"
    mock.clear_faults()
    assert get(proxy, "/locations").status == 200, "recovers once the upstream does"


# ---- purge ---------------------------------------------------------------------------------

def test_purge_by_device_credential_and_all(mock, store, start_proxy):
    proxy = start_proxy(mock.origin, env={**store, **cache_env("30s,30s")})
    a0, a1 = device_ids(proxy, TOKEN)[:2]
    b0 = device_ids(proxy, TOKEN_B)[0]
    a0_status, a1_status = f"/devices/{a0}/status", f"/devices/{a1}/status"
    b0_status = f"/devices/{b0}/status"

    def warm():
        for token, path in ((TOKEN, a0_status), (TOKEN, a1_status), (TOKEN_B, b0_status)):
            get(proxy, path, token=token)
            assert get(proxy, path, token=token).cache == "HIT", f"{path} should be cached"

    def cache_state(token, path):
        return get(proxy, path, token=token).cache

    warm()
    status, body = proxy.purge(device="no-such-device")
    assert status == 200 and body == {"purged": 0}, \
        f"purging a device with no entries: expected {{'purged': 0}}, got {status} {body}"

    status, body = proxy.purge(device=a0)
    assert status == 200 and isinstance(body, dict) and body.get("purged", 0) >= 1, \
        f"POST /purge?device= answers {{\"purged\":N}} with N >= 1: got {status} {body}"
    assert cache_state(TOKEN, a0_status) == "MISS", "the purged device's status is a MISS"
    assert cache_state(TOKEN, a1_status) == "HIT", "another device's entry stays"
    assert cache_state(TOKEN_B, b0_status) == "HIT"

    status, body = proxy.purge(credential=sha256_hex(TOKEN))
    assert status == 200 and body.get("purged", 0) >= 3, \
        f"token A had /devices and two statuses cached: got {status} {body}"
    assert cache_state(TOKEN, a0_status) == "MISS"
    assert cache_state(TOKEN, a1_status) == "MISS"
    assert cache_state(TOKEN, "/devices") == "MISS", "every entry of the credential goes"
    assert cache_state(TOKEN_B, b0_status) == "HIT", "another credential's entries stay"

    status, body = proxy.purge()
    assert status == 200 and body.get("purged", 0) >= 5, \
        f"purging everything: A's 3 and B's 2 entries at least, got {status} {body}"
    for token, path in ((TOKEN, a0_status), (TOKEN, "/devices"), (TOKEN_B, b0_status),
                        (TOKEN_B, "/devices")):
        assert cache_state(token, path) == "MISS", f"{path} must be a MISS after purging all"


def test_purge_by_client_in_shared_mode(start_mock, store, start_proxy):
    shared = "shared-cache-token-1234"
    mock = start_mock(tokens=[shared])
    proxy = start_proxy(mock.origin, env={
        **store, **cache_env("30s,30s"), "STPROXY_TOKEN": shared,
        "STPROXY_CLIENT_KEYS": "homeassistant:key-ha-1111,nodered:key-nr-2222"})
    assert get(proxy, "/locations", token="key-ha-1111").cache == "MISS"
    shared_hit = get(proxy, "/locations", token="key-nr-2222")
    assert shared_hit.cache == "HIT", "clients of one shared credential share its cache"
    status, body = proxy.purge(client="homeassistant")
    assert status == 200 and body.get("purged", 0) >= 1, \
        f"POST /purge?client=homeassistant: got {status} {body}"
    assert get(proxy, "/locations", token="key-nr-2222").cache == "MISS", \
        "purging a client's entries purges its credential's cache"
    assert mock.calls("/locations") == 2


# ---- metrics and the embedded store's bound -----------------------------------------------

def test_cache_metrics(mock, store, start_proxy):
    proxy = start_proxy(mock.origin, env={**store, **cache_env("30s,30s")})
    device = device_ids(proxy)[0]  # MISS
    assert get(proxy, "/devices").cache == "HIT"
    assert get(proxy, "/devices").cache == "HIT"
    cmd = proxy.request("POST", f"/devices/{device}/commands", token=TOKEN, body=COMMAND_ON,
                        headers=JSON)
    assert cmd.cache == "BYPASS"
    for name in ("stproxy_cache_hits_total", "stproxy_cache_stale_total",
                 "stproxy_cache_misses_total", "stproxy_cache_bypass_total",
                 "stproxy_coalesced_waiters_total", "stproxy_cache_entries",
                 "stproxy_cache_bytes", "stproxy_redis_errors_total", "stproxy_redis_up"):
        assert metric_exposed(proxy, name), f"/metrics must expose {name}"
    assert proxy.metric("stproxy_cache_hits_total") == 2
    assert proxy.metric("stproxy_cache_misses_total") == 1
    assert proxy.metric("stproxy_cache_bypass_total") == 1
    assert proxy.metric("stproxy_cache_stale_total") == 0
    assert proxy.metric("stproxy_redis_errors_total") == 0
    if store.redis is None:
        assert proxy.metric("stproxy_cache_entries") >= 1, "the embedded store holds /devices"
        assert proxy.metric("stproxy_cache_bytes") > 0
        assert proxy.metric("stproxy_redis_up") == 0, "no Redis configured"
    else:
        assert proxy.metric("stproxy_redis_up") == 1, "Redis is up"


def test_embedded_store_is_bounded_and_evicts_least_recently_used(start_mock, start_proxy):
    mock = start_mock(devices=150)
    limit = 64 * 1024
    # The device list (~85 KB here) is not cached, so that only descriptions fill the store.
    proxy = start_proxy(mock.origin, env={**cache_env("300s,300s", DEVICES="0"),
                                          "STPROXY_CACHE_MAX_BYTES": "64k"})
    ids = device_ids(proxy)
    assert len(ids) == 150
    keep = f"/devices/{ids[0]}"
    assert get(proxy, keep).cache == "MISS"
    for i, device in enumerate(ids[1:], start=1):
        assert get(proxy, f"/devices/{device}").status == 200
        if i % 10 == 0:
            assert get(proxy, keep).cache == "HIT", \
                "an entry used every 10 requests must not be evicted"
        held = proxy.metric("stproxy_cache_bytes")
        assert held <= limit, f"the embedded store holds {held} bytes, over its 64k bound"
    assert get(proxy, keep).cache == "HIT", "the recently used entry survives"
    evicted = get(proxy, f"/devices/{ids[1]}")
    assert evicted.cache == "MISS", \
        "~150 KB of descriptions in a 64 KB store: the oldest unused one must be evicted"
    assert 0 < proxy.metric("stproxy_cache_entries") < 150
