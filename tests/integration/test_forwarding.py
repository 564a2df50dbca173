"""Forwarding through the real proxy to the mock API over verified TLS:
both path styles, all methods, bodies, headers, status codes, links."""
import json

import pytest

TOKEN = "pat-forwarding-0001"
# For tests of the forwarding machinery itself: every read goes upstream.
NO_CACHE = {"STPROXY_CACHE_LOCATIONS": "0", "STPROXY_CACHE_DEVICES": "0"}


def header_values(last, name):
    return [v for k, v in last["headers"] if k.lower() == name.lower()]


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_get_both_path_styles(mock, start_proxy, prefix):
    proxy = start_proxy(mock.origin)
    resp = proxy.request("GET", f"{prefix}/devices", token=TOKEN)
    assert resp.status == 200
    items = resp.json()["items"]
    assert len(items) == 5
    assert resp.headers["X-Cache"] == "MISS"
    device = items[0]["deviceId"]
    status = proxy.request("GET", f"{prefix}/devices/{device}/status", token=TOKEN)
    assert status.status == 200
    assert "switch" in status.json()["components"]["main"]
    last = mock.last_request()
    assert last["uri"] == f"{prefix}/devices/{device}/status"
    assert header_values(last, "Authorization") == [f"Bearer {TOKEN}"]
    assert header_values(last, "Host") == [f"localhost:{mock.api_port}"]
    assert last["sni"] == "localhost", "SNI names the upstream host"
    counters = mock.counters()
    assert counters["by_token"] == {TOKEN: 2}


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_command_post_and_its_effect(mock, start_proxy, prefix):
    proxy = start_proxy(mock.origin)
    device = proxy.request("GET", f"{prefix}/devices", token=TOKEN).json()["items"][1]["deviceId"]
    body = json.dumps({"commands": [{"component": "main", "capability": "switch",
                                     "command": "on", "arguments": []}]})
    resp = proxy.request("POST", f"{prefix}/devices/{device}/commands", token=TOKEN, body=body,
                         headers={"Content-Type": "application/json"})
    assert resp.status == 200, resp.body
    assert resp.json()["results"][0]["status"] in ("ACCEPTED", "COMPLETED")
    assert resp.headers["X-Cache"] == "BYPASS"
    last = mock.last_request()
    assert last["method"] == "POST"
    assert last["body"] == body, "the request body reaches the upstream byte for byte"
    assert header_values(last, "Content-Length") == [str(len(body))]
    status = proxy.request("GET", f"{prefix}/devices/{device}/status", token=TOKEN).json()
    assert status["components"]["main"]["switch"]["switch"]["value"] == "on"


def test_accept_forwarded_and_hop_by_hop_dropped(mock, start_proxy):
    proxy = start_proxy(mock.origin)
    accept = "application/vnd.smartthings+json;v=20170916"
    resp = proxy.request("GET", "/devices?max=1", token=TOKEN, headers={
        "Accept": accept,
        "Connection": "keep-alive, X-Conn-Only",
        "X-Conn-Only": "must not pass",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "TE": "trailers",
        "Upgrade": "h2c",
        "Accept-Encoding": "gzip",
        "X-ST-Correlation": "abc-123",
    })
    assert resp.status == 200
    last = mock.last_request()
    names = {k.lower() for k, _ in last["headers"]}
    assert header_values(last, "Accept") == [accept]
    assert header_values(last, "X-ST-Correlation") == ["abc-123"], "end-to-end headers pass"
    for hop in ("x-conn-only", "keep-alive", "proxy-authorization", "te", "upgrade",
                "accept-encoding"):
        assert hop not in names, f"{hop} must not be forwarded"
    assert header_values(last, "Connection") in ([], ["keep-alive"])
    assert last["uri"] == "/devices?max=1", "the query reaches the upstream unchanged"


def test_status_and_body_passed_through(mock, start_proxy):
    proxy = start_proxy(mock.origin)
    resp = proxy.request("GET", "/devices/no-such-device/status", token=TOKEN)
    assert resp.status == 404
    err = resp.json()["error"]
    assert err["code"] == "NotFoundError"
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers.get("X-Mock-Request-Id"), "upstream headers reach the client"
    # the upstream's own 401 passes through untouched in pass-through mode
    mock_strict = proxy.request("GET", "/locations", token=TOKEN)
    assert mock_strict.status == 200


def test_other_methods_reach_the_upstream(mock, start_proxy):
    proxy = start_proxy(mock.origin)
    for method in ("PUT", "DELETE", "PATCH"):
        resp = proxy.request(method, "/devices/anything", token=TOKEN, body=b"{}")
        assert resp.status in (404, 405), resp.body
        assert mock.last_request()["method"] == method


def test_pagination_links_rewritten(start_mock, start_proxy):
    mock = start_mock(devices=7)
    proxy = start_proxy(mock.origin)
    for prefix in ("", "/v1"):
        seen = []
        path = f"{prefix}/devices?max=3"
        pages = 0
        while path:
            resp = proxy.request("GET", path, token=TOKEN,
                                 headers={"Host": f"127.0.0.1:{proxy.port}"})
            assert resp.status == 200
            doc = resp.json()
            seen += [d["deviceId"] for d in doc["items"]]
            pages += 1
            nxt = doc.get("_links", {}).get("next")
            if not nxt:
                break
            href = nxt["href"]
            assert href.startswith(f"http://127.0.0.1:{proxy.port}{prefix}/devices?"), href
            path = href[len(f"http://127.0.0.1:{proxy.port}"):]
        assert pages == 3
        assert len(seen) == 7 and len(set(seen)) == 7
    # the previous link is rewritten too, and to the Host the client used
    resp = proxy.request("GET", "/devices?max=3&page=1", token=TOKEN,
                         headers={"Host": f"localhost:{proxy.port}"})
    links = resp.json()["_links"]
    assert links["previous"]["href"].startswith(f"http://localhost:{proxy.port}/devices?")
    assert links["next"]["href"].startswith(f"http://localhost:{proxy.port}/devices?")
    assert "smartthings" not in resp.body.decode() and str(mock.api_port) not in resp.body.decode()


def test_upstream_keep_alive_connections_are_reused(mock, start_proxy):
    proxy = start_proxy(mock.origin, env=NO_CACHE)
    for _ in range(10):
        assert proxy.request("GET", "/locations", token=TOKEN).status == 200
    assert proxy.metric("stproxy_upstream_connections_opened_total") == 1
    assert proxy.metric("stproxy_upstream_reused_total") == 9
    assert proxy.metric("stproxy_upstream_requests_total") == 10


def test_upstream_pool_is_bounded(start_mock, start_proxy):
    import threading
    mock = start_mock(latency_ms=300)
    proxy = start_proxy(mock.origin, env={**NO_CACHE, "STPROXY_UPSTREAM_CONNECTIONS": "2"})
    results = []

    def one():
        results.append(proxy.request("GET", "/locations", token=TOKEN).status)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6
    assert proxy.metric("stproxy_upstream_connections_opened_total") == 2
    assert proxy.metric("stproxy_upstream_reused_total") == 4


def test_client_keep_alive(mock, start_proxy):
    proxy = start_proxy(mock.origin)
    conn = proxy.connection()
    for path in ("/devices", "/locations", "/v1/devices"):
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    conn.close()
    assert proxy.metric("stproxy_client_connections_accepted_total") == 1


def test_upstream_gone_gives_502(start_mock, start_proxy):
    """An upstream that stops listening: the pooled connection is dropped and
    the next request gets a clear 502 in the API's error shape."""
    mock = start_mock()
    proxy = start_proxy(mock.origin, env=NO_CACHE)
    assert proxy.request("GET", "/locations", token=TOKEN).status == 200
    mock.stop()
    resp = proxy.request("GET", "/locations", token=TOKEN)
    assert resp.status == 502
    err = resp.json()["error"]
    assert err["code"] == "BadGatewayError"
    assert "connect" in err["message"]
    assert proxy.request("GET", "/locations", token=TOKEN).status == 502, "still serving"
