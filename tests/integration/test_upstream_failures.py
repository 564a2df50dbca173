"""TLS verification that cannot be switched off, and upstream timeouts."""
import time


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
