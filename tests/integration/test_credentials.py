"""Pass-through and shared credentials, 401s in the API's shape, and no
token or key anywhere in the proxy's log."""
import re

SHARED = "shared-upstream-token-7f3a9c"
KEY_HA = "ha-key-0c1d2e3f4a5b"
KEY_NR = "nr-key-9a8b7c6d5e4f"


def shared_env():
    return {"STPROXY_TOKEN": SHARED,
            "STPROXY_CLIENT_KEYS": f"homeassistant:{KEY_HA},nodered:{KEY_NR}"}


def assert_api_error(resp, status, code):
    assert resp.status == status
    assert resp.headers["Content-Type"].startswith("application/json")
    doc = resp.json()
    assert set(doc) == {"requestId", "error"}
    assert doc["requestId"]
    assert doc["error"]["code"] == code
    assert doc["error"]["message"]
    assert doc["error"]["details"] == []
    return doc


def test_shared_mode_two_client_keys(start_mock, start_proxy):
    mock = start_mock(tokens=[SHARED])
    proxy = start_proxy(mock.origin, env=shared_env())
    first = proxy.request("GET", "/devices", token=KEY_HA)
    assert first.status == 200 and first.headers["X-Cache"] == "MISS", first.body
    last = mock.last_request()
    auth = [v for k, v in last["headers"] if k.lower() == "authorization"]
    assert auth == [f"Bearer {SHARED}"], "the shared credential goes upstream, not the key"
    # both keys map to one credential, so they share its cache
    second = proxy.request("GET", "/devices", token=KEY_NR)
    assert second.status == 200 and second.headers["X-Cache"] == "HIT"
    assert second.body == first.body
    assert mock.counters()["by_token"] == {SHARED: 1}
    log = proxy.output()
    assert re.search(r"access client=homeassistant method=GET path=/devices status=200", log)
    assert re.search(r"access client=nodered method=GET path=/devices status=200", log)


def test_shared_mode_unknown_or_missing_key_is_401(start_mock, start_proxy):
    mock = start_mock(tokens=[SHARED])
    proxy = start_proxy(mock.origin, env=shared_env())
    assert_api_error(proxy.request("GET", "/devices", token="not-a-key"), 401,
                     "UnauthorizedError")
    assert_api_error(proxy.request("GET", "/devices", token=KEY_HA[:-1]), 401,
                     "UnauthorizedError")
    assert_api_error(proxy.request("GET", "/devices"), 401, "UnauthorizedError")
    # the upstream credential itself is not a client key
    assert_api_error(proxy.request("GET", "/devices", token=SHARED), 401, "UnauthorizedError")
    assert_api_error(proxy.request("GET", "/devices", headers={"Authorization": f"Basic {KEY_HA}"}),
                     401, "UnauthorizedError")
    assert mock.counters()["total"] == 0, "refused requests never reach the upstream"
    assert proxy.metric("stproxy_auth_rejected_total") == 5
    assert proxy.metric('stproxy_requests_total{code="401"}') == 5


def test_token_file_for_docker_secrets(start_mock, start_proxy, tmp_path):
    mock = start_mock(tokens=[SHARED])
    secret = tmp_path / "token"
    secret.write_text(SHARED + "\n")
    proxy = start_proxy(mock.origin, env={"STPROXY_TOKEN_FILE": str(secret),
                                          "STPROXY_CLIENT_KEYS": f"cli:{KEY_HA}"})
    assert proxy.request("GET", "/locations", token=KEY_HA).status == 200
    assert mock.counters()["by_token"] == {SHARED: 1}


def test_pass_through_tokens_are_kept_apart(start_mock, start_proxy):
    mock = start_mock()
    proxy = start_proxy(mock.origin)
    a = proxy.request("GET", "/devices", token="token-of-alice").json()["items"]
    b = proxy.request("GET", "/devices", token="token-of-bob").json()["items"]
    assert {d["deviceId"] for d in a}.isdisjoint({d["deviceId"] for d in b})
    assert mock.counters()["by_token"] == {"token-of-alice": 1, "token-of-bob": 1}
    assert_api_error(proxy.request("GET", "/devices"), 401, "UnauthorizedError")


def test_upstream_401_passes_through(start_mock, start_proxy):
    mock = start_mock(tokens=["the-only-good-token"])
    proxy = start_proxy(mock.origin)
    resp = proxy.request("GET", "/devices", token="expired-token")
    assert resp.status == 401
    assert resp.json()["error"]["code"] == "UnauthorizedError"


def test_no_secret_in_the_log(start_mock, start_proxy):
    mock = start_mock(tokens=[SHARED])
    proxy = start_proxy(mock.origin, env={**shared_env(), "STPROXY_LOG_LEVEL": "debug"})
    proxy.request("GET", "/devices", token=KEY_HA)
    proxy.request("GET", "/devices", token="wrong-key-zzz")
    proxy.request("POST", "/devices/x/commands", token=KEY_NR, body=b'{"commands":[]}')
    _, metrics = proxy.admin("/metrics")
    proxy.stop()
    log = proxy.output()
    assert "access client=homeassistant" in log
    for secret in (SHARED, KEY_HA, KEY_NR, "wrong-key-zzz"):
        assert secret not in log, f"{secret} leaked into the log"
        assert secret not in metrics, f"{secret} leaked into the metrics"


def test_sighup_reloads_keys_policies_and_budgets(start_mock, start_proxy, tmp_path):
    """SIGHUP takes new client keys, cache policies and budgets without
    dropping connections; a configuration that does not load is refused and
    the running one stays."""
    import signal
    from harness import wait_for
    mock = start_mock(tokens=[SHARED])
    conf = f"token = {SHARED}\nclient_keys = ha:{KEY_HA}\ncache_locations = 0\n"
    proxy = start_proxy(mock.origin, config_text=conf,
                        env={"STPROXY_BUDGET": "1000/1s", "STPROXY_DEVICE_BUDGET": "1000/1s"})
    kept = proxy.connection()
    kept.request("GET", "/locations", headers={"Authorization": f"Bearer {KEY_HA}"})
    first = kept.getresponse()
    first.read()
    assert first.status == 200 and first.getheader("X-Cache") == "BYPASS"
    assert proxy.request("GET", "/locations", token=KEY_NR).status == 401

    with open(proxy.config_path, "w") as f:
        f.write(f"token = {SHARED}\nclient_keys = nodered:{KEY_NR}\ncache_locations = 30s,60s\n"
                "upstream_connections = 3\n")
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: reloaded" in proxy.output(), what="the reload")
    assert "needing a restart: upstream_connections" in proxy.output(), "a fixed setting that changed is named"
    assert proxy.request("GET", "/locations", token=KEY_NR).status == 200, "the new key works"
    assert proxy.request("GET", "/locations", token=KEY_HA).status == 401, "the old key is gone"
    assert proxy.request("GET", "/locations", token=KEY_NR).headers["X-Cache"] == "HIT", \
        "the new cache policy applies"
    kept.request("GET", "/locations", headers={"Authorization": f"Bearer {KEY_NR}"})
    again = kept.getresponse()
    again.read()
    assert again.status == 200, "a connection open before the reload keeps working"

    with open(proxy.config_path, "w") as f:
        f.write("client_keys = broken\n")
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "the new configuration is refused" in proxy.output(), what="the refusal")
    assert proxy.request("GET", "/locations", token=KEY_NR).status == 200, "the old one stays"
    assert KEY_NR not in proxy.output() and SHARED not in proxy.output()
