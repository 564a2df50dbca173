"""TLS verification that cannot be switched off, upstream timeouts, and an upstream that
answers broken things."""
import time

import pytest


def test_untrusted_certificate_gives_502(mock, start_proxy, pki):
    proxy = start_proxy(mock.origin, env={"STPROXY_UPSTREAM_CA": pki.other_ca})
    resp = proxy.request("GET", "/devices", token="tok")
    assert resp.status == 502
    err = resp.json()["error"]
    assert err["code"] == "BadGatewayError"
    assert "certificate verification failed" in err["message"]
    assert mock.counters()["total"] == 0, "nothing is sent over an unverified connection"
    log = proxy.output()
    assert "certificate verification failed" in log and "unable to get local issuer" in log


def test_system_store_does_not_trust_a_private_ca(mock, start_proxy):
    proxy = start_proxy(mock.origin, trust=False)
    resp = proxy.request("GET", "/devices", token="tok")
    assert resp.status == 502
    assert "certificate verification failed" in resp.json()["error"]["message"]


def test_certificate_for_another_name_gives_502(start_mock, start_proxy, pki):
    mock = start_mock(cert=pki.wrong_name_cert, key=pki.wrong_name_key)
    proxy = start_proxy(mock.origin)
    resp = proxy.request("GET", "/devices", token="tok")
    assert resp.status == 502
    assert "hostname mismatch" in resp.json()["error"]["message"]
    assert mock.counters()["total"] == 0


def test_ip_address_upstream_checks_the_ip_san(mock, start_proxy, pki):
    proxy = start_proxy(f"https://127.0.0.1:{mock.api_port}")
    assert proxy.request("GET", "/locations", token="tok").status == 200
    assert mock.last_request()["sni"] is None, "no SNI for an address (RFC 6066)"


def test_handshake_that_never_finishes_hits_the_connect_timeout(start_proxy):
    """A host that accepts TCP but never speaks TLS: upstream_connect_timeout
    ends the attempt, well before upstream_timeout."""
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    try:
        proxy = start_proxy(f"https://localhost:{port}",
                            env={"STPROXY_UPSTREAM_CONNECT_TIMEOUT": "400ms",
                                 "STPROXY_UPSTREAM_TIMEOUT": "6s"})
        started = time.monotonic()
        resp = proxy.request("GET", "/devices", token="tok")
        elapsed = time.monotonic() - started
        assert resp.status == 504
        assert "connecting to the upstream took longer than 400 ms" in resp.json()["error"]["message"]
        assert elapsed < 3, "the connect timeout, not the answer deadline, ended it"
    finally:
        silent.close()


def test_upstream_timeout_gives_504(start_mock, start_proxy):
    mock = start_mock(latency_ms=5000)
    proxy = start_proxy(mock.origin, env={"STPROXY_UPSTREAM_TIMEOUT": "700ms"})
    started = time.monotonic()
    resp = proxy.request("GET", "/devices", token="tok")
    assert resp.status == 504
    assert resp.json()["error"]["code"] == "GatewayTimeoutError"
    assert time.monotonic() - started < 4.5, "answered at the timeout, not after the upstream"
    mock.set_latency(0)
    assert proxy.request("GET", "/devices", token="tok").status == 200, "recovers"
    assert proxy.metric("stproxy_upstream_errors_total") == 1


def test_connection_refused_gives_502(start_proxy):
    from harness import free_port
    proxy = start_proxy(f"https://localhost:{free_port()}")
    resp = proxy.request("GET", "/devices", token="tok")
    assert resp.status == 502
    assert "cannot connect" in resp.json()["error"]["message"]


# ---- a broken upstream's answers (issue 8) ---------------------------------------------------

@pytest.mark.parametrize("mode,status", [("reset", 502), ("garbage", 502), ("truncate", 502),
                                         ("huge", 502)])
def test_broken_answers_give_502_and_are_never_cached(mode, status, mock, start_proxy):
    """A reset, a garbage status line, a body cut off mid-way and a body over
    upstream_max_body_size: a clear 502 in the API's shape, nothing cached, and the next
    request (the upstream healthy again) is a fresh MISS. The 100 MB body is refused from its
    Content-Length, so memory stays bounded."""
    proxy = start_proxy(mock.origin, env={"STPROXY_UPSTREAM_MAX_BODY_SIZE": "1m"})
    mock.fail(mode, count=1)
    resp = proxy.request("GET", "/locations", token="tok")
    assert resp.status == status, (mode, resp.status, resp.body[:200])
    assert resp.json()["error"]["code"] == "BadGatewayError"
    again = proxy.request("GET", "/locations", token="tok")
    assert again.status == 200 and again.cache == "MISS", "the failure was not cached"
    assert proxy.metric("stproxy_upstream_errors_total") == 1
    assert proxy.metric("stproxy_cache_stores_total") == 1, "only the good answer was kept"


def test_non_json_labelled_json_passes_through_unchanged(mock, start_proxy):
    """The rewriter meets HTML that mentions _links and an href: it leaves the body alone."""
    proxy = start_proxy(mock.origin)
    mock.fail("nonjson", count=1)
    resp = proxy.request("GET", "/devices", token="tok")
    assert resp.status == 200
    assert resp.body.startswith(b"<html>") and b"https://localhost/x" in resp.body
    assert proxy.request("GET", "/locations", token="tok").status == 200, "still serving"
