"""The client listener's limits and refusals, the admin listener, the access
log, the command line and a draining shutdown."""
import re
import socket
import subprocess
import threading
import time

from harness import STPROXY

TOKEN = "pat-client-side"


def raw_exchange(port, data, timeout=5):
    """Sends raw bytes; returns everything the proxy answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"Content-Length" in b"".join(chunks):
                    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                    m = re.search(rb"Content-Length: (\d+)", head)
                    if m and len(body) >= int(m.group(1)):
                        break
        except socket.timeout:
            pass
    return b"".join(chunks)


def test_connect_and_foreign_targets_refused(mock, start_proxy):
    proxy = start_proxy(mock.origin)
    answer = raw_exchange(proxy.port, b"CONNECT evil.example:443 HTTP/1.1\r\n"
                                      b"Host: evil.example:443\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405"), answer[:100]
    answer = raw_exchange(proxy.port, b"GET http://evil.example/devices HTTP/1.1\r\n"
                                      b"Host: evil.example\r\nAuthorization: Bearer t\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403"), answer[:100]
    assert b'"ForbiddenError"' in answer
    answer = raw_exchange(proxy.port, b"GET /devices/../apps HTTP/1.1\r\nHost: x\r\n"
                                      b"Authorization: Bearer t\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    answer = raw_exchange(proxy.port, b"GET /devices/a%2Fb HTTP/1.1\r\nHost: x\r\n"
                                      b"Authorization: Bearer t\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert mock.counters()["total"] == 0, "no refused request reaches any host"
    # absolute-form naming the proxy itself is an ordinary request
    host = f"127.0.0.1:{proxy.port}".encode()
    answer = raw_exchange(proxy.port, b"GET http://" + host + b"/locations HTTP/1.1\r\nHost: " +
                          host + b"\r\nAuthorization: Bearer t\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    assert proxy.metric("stproxy_target_refused_total") == 4


def test_oversized_headers_and_body(mock, start_proxy):
    proxy = start_proxy(mock.origin, env={"STPROXY_MAX_HEADER_SIZE": "4k",
                                          "STPROXY_MAX_BODY_SIZE": "1k"})
    big = "x" * 8000
    answer = raw_exchange(proxy.port, f"GET /devices HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n"
                                      f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
    assert answer == b"" or answer.split(b" ")[1][:1] == b"4", answer[:80]
    resp = proxy.request("POST", "/devices/x/commands", token=TOKEN, body=b"{" + b" " * 4000 + b"}")
    assert resp.status == 413
    assert mock.counters()["total"] == 0
    assert proxy.request("GET", "/locations", token=TOKEN).status == 200, "still serving"


def test_idle_client_connection_closed(mock, start_proxy):
    proxy = start_proxy(mock.origin, env={"STPROXY_CLIENT_TIMEOUT": "1s"})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /loc")  # and then nothing
        started = time.monotonic()
        assert s.recv(100) == b"", "a stalled request is closed without an answer"
        assert 0.5 < time.monotonic() - started < 4
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(f"GET /locations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                  .encode())
        time.sleep(0.2)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        while s.recv(65536):  # the rest of the answer, then the close
            pass
        assert time.monotonic() - started < 4, "an idle keep-alive connection is closed"
    time.sleep(0.3)
    assert proxy.metric("stproxy_client_connections") == 0


def test_connection_limit(mock, start_proxy):
    """At max_connections with no connection idle (each is in the middle of a request), a
    new client waits in the accept queue until one closes."""
    proxy = start_proxy(mock.origin, env={"STPROXY_MAX_CONNECTIONS": "2"})
    held = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(2)]
    for s in held:
        s.sendall(b"GET /locations HTTP/1.1\r\n")  # a request under way: not idle
    time.sleep(0.3)
    assert proxy.metric("stproxy_client_connections") == 2
    result = {}

    def third():
        result["status"] = proxy.request("GET", "/locations", token=TOKEN, timeout=10).status

    t = threading.Thread(target=third)
    t.start()
    time.sleep(0.5)
    assert "status" not in result, "a third connection waits while two are busy"
    assert proxy.metric("stproxy_client_connection_limit_reached_total") >= 1
    held[0].close()
    t.join(timeout=8)
    assert result.get("status") == 200, "served once a connection closed"
    held[1].close()


def test_at_the_limit_the_connection_idle_longest_makes_room(mock, start_proxy):
    """Thousands of idle keep-alive clients cannot lock others out: at max_connections a new
    client takes the place of the connection idle longest."""
    proxy = start_proxy(mock.origin, env={"STPROXY_MAX_CONNECTIONS": "3"})
    idle = []
    for _ in range(3):
        conn = proxy.connection()
        conn.request("GET", "/locations", headers={"Authorization": f"Bearer {TOKEN}"})
        assert conn.getresponse().read()
        idle.append(conn)
        time.sleep(0.05)  # an order of idleness
    resp = proxy.request("GET", "/locations", token=TOKEN, timeout=5)
    assert resp.status == 200, "the fourth client is served at once"
    assert proxy.metric("stproxy_client_idle_closed_total") == 1
    oldest = idle[0].sock
    oldest.settimeout(2)
    assert oldest.recv(100) == b"", "the connection idle longest was closed"
    idle[2].request("GET", "/locations", headers={"Authorization": f"Bearer {TOKEN}"})
    assert idle[2].getresponse().status == 200, "the others still work"
    for conn in idle:
        conn.close()


def test_slowloris_is_closed_when_its_request_is_not_whole_in_time(mock, start_proxy):
    """A client trickling its head a byte at a time never trips the idle timeout; the request
    must be whole within client_timeout of its first byte."""
    proxy = start_proxy(mock.origin, env={"STPROXY_CLIENT_TIMEOUT": "1s"})
    head = f"GET /locations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n" \
           f"X-Slow: {'a' * 200}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        started = time.monotonic()
        closed = False
        for byte in head:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.02)
            if time.monotonic() - started > 3:
                break
        s.settimeout(2)
        try:
            closed = closed or s.recv(100) == b""
        except OSError:
            closed = True
    assert closed, "the trickling client was closed"
    assert time.monotonic() - started < 3.5
    assert "did not arrive within client_timeout" in proxy.output()
    assert proxy.request("GET", "/locations", token=TOKEN).status == 200, "still serving"


def test_access_log_line(mock, start_proxy):
    proxy = start_proxy(mock.origin)
    proxy.request("GET", "/devices?max=2", token=TOKEN)
    proxy.request("GET", "/devices/none/status", token=TOKEN)
    log = proxy.output()
    assert re.search(r"access client=pass-through method=GET path=/devices status=200 cache=MISS "
                     r"upstream_ms=\d+\.\d total_ms=\d+\.\d", log), log
    assert re.search(r"path=/devices/none/status status=404", log)
    assert "max=2" not in log, "queries are not logged"


def test_admin_endpoints(mock, start_proxy):
    proxy = start_proxy(mock.origin)
    proxy.request("GET", "/devices", token=TOKEN)
    proxy.request("GET", "/devices/none", token=TOKEN)
    status, body = proxy.admin("/healthz")
    assert status == 200 and body.strip() == "ok"
    status, body = proxy.admin("/readyz")
    assert status == 200 and '"ready":true' in body
    status, body = proxy.admin("/metrics")
    assert status == 200
    assert "# TYPE stproxy_requests_total counter" in body
    assert 'stproxy_requests_total{code="200"} 1' in body
    assert 'stproxy_requests_total{code="404"} 1' in body
    assert "stproxy_upstream_requests_total 2" in body
    assert "stproxy_upstream_errors_total 0" in body
    assert 'stproxy_request_duration_seconds_bucket{le="+Inf"} 2' in body
    assert "stproxy_request_duration_seconds_count 2" in body
    assert 'stproxy_upstream_duration_seconds_bucket{le="0.5"}' in body
    assert proxy.admin("/nope")[0] == 404


def test_admin_listens_on_loopback_by_default(mock, start_proxy):
    from harness import Proxy
    proxy = start_proxy(mock.origin)
    line = [l for l in proxy.output().splitlines() if " up: " in l][0]
    assert f"admin=127.0.0.1:{proxy.admin_port}" in line
    out = subprocess.run([STPROXY, "-h"], capture_output=True, text=True, env={})
    assert re.search(r"admin_listen\s+STPROXY_ADMIN_LISTEN\s+127\.0\.0\.1:9090", out.stdout)
    assert Proxy  # the default itself is checked by tests/unit/test_config


def run_cli(*args, env=None):
    return subprocess.run([STPROXY, *args], capture_output=True, text=True, env=env or {},
                          timeout=10)


def test_cli_version_help_and_check(tmp_path):
    out = run_cli("-V")
    assert out.returncode == 0
    assert re.search(r"^stproxy \d+\.\d+\.\d+", out.stdout)
    assert "libevent 2.1" in out.stdout and "OpenSSL 3" in out.stdout and "hiredis" in out.stdout
    out = run_cli("-h")
    assert out.returncode == 0 and "usage: stproxy [-c FILE] [-t] [-V] [-h]" in out.stdout
    good = tmp_path / "good.conf"
    good.write_text("listen = 127.0.0.1:18080\nupstream_timeout = 3s\n")
    out = run_cli("-t", "-c", str(good))
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text("# a comment\nlisten = 127.0.0.1:18080\nupstream_timeout = forever\n")
    out = run_cli("-t", "-c", str(bad))
    assert out.returncode == 1
    assert f"{bad}:3: upstream_timeout: invalid duration" in out.stderr
    out = run_cli("-t", env={"STPROXY_UPSTREAM": "http://plain.example"})
    assert out.returncode == 1 and "environment STPROXY_UPSTREAM" in out.stderr
    out = run_cli("-x")
    assert out.returncode == 2


def test_bad_config_stops_start_up(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("listen = 127.0.0.1:1\nno_such_key = 1\n")
    out = run_cli("-c", str(bad))
    assert out.returncode == 1
    assert f"{bad}:2: no_such_key: unknown setting" in out.stderr


def test_port_in_use_stops_start_up(mock):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run_cli(env={"STPROXY_LISTEN": f"127.0.0.1:{port}",
                           "STPROXY_UPSTREAM": mock.origin})
        assert out.returncode == 1
        assert "cannot listen on" in out.stderr


def test_malformed_header_names_never_reach_the_upstream(mock, start_proxy):
    """A name with a blank before the colon would slip past the hop-by-hop
    list; the server refuses any name that is not a token."""
    proxy = start_proxy(mock.origin)
    for bad in (b"Transfer-Encoding : chunked", b"Content-Length : 0", b": empty-name",
                b"Bad Name: x", b"X\x01Ctl: y"):
        answer = raw_exchange(proxy.port, b"GET /locations HTTP/1.1\r\nHost: x\r\n"
                                          b"Authorization: Bearer t\r\n" + bad + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), (bad, answer[:80])
        assert b'"BadRequestError"' in answer
    assert mock.counters()["total"] == 0


def test_upstream_x_cache_and_age_are_replaced(mock, start_proxy):
    """The proxy's X-Cache is the only one a client sees."""
    proxy = start_proxy(mock.origin)
    resp = proxy.request("GET", "/locations", token=TOKEN)
    assert resp.headers.get_all("X-Cache") == ["MISS"]
    resp = proxy.request("GET", "/locations", token=TOKEN)
    assert resp.headers.get_all("X-Cache") == ["HIT"]
    assert len(resp.headers.get_all("Age")) == 1


def test_sigterm_drains_and_turns_new_requests_away(mock, start_proxy):
    """SIGTERM: the request in flight is still answered and the process exits
    0; a request arriving meanwhile on a kept-alive connection gets 503 with
    Connection: close."""
    from harness import wait_for
    proxy = start_proxy(mock.origin)
    conn = proxy.connection()
    conn.request("GET", "/locations/x/modes", headers={"Authorization": f"Bearer {TOKEN}"})
    conn.getresponse().read()  # a kept-alive connection, open when the drain starts
    mock.set_latency(1500)
    result = {}

    def slow():
        result["status"] = proxy.request("GET", "/devices", token=TOKEN).status

    t = threading.Thread(target=slow)
    t.start()
    wait_for(lambda: mock.counters()["by_path"].get("GET /devices"), timeout=5,
             what="the slow request to reach the upstream")
    proxy.proc.terminate()
    wait_for(lambda: "draining 1 in-flight" in proxy.output(), timeout=5,
             what="the drain to start")
    conn.request("GET", "/locations", headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 503 and b"ServiceUnavailableError" in body
    assert resp.getheader("Connection") == "close"
    t.join(timeout=5)
    assert result.get("status") == 200, "the in-flight request still completed"
    assert proxy.proc.wait(timeout=5) == 0


def test_request_smuggling_shapes_refused(mock, start_proxy):
    """Framing that two parties could read two ways is refused before any
    handler sees it, and the connection is closed."""
    proxy = start_proxy(mock.origin)
    head = b"POST /devices/x/commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n"
    shapes = {
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n": b"400",
        b"Content-Length: 4\r\nContent-Length: 5\r\n\r\n{}{}": b"400",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n": b"400",
        b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n": b"501",
        b"Content-Length: -1\r\n\r\n": b"400",
        b"Content-Length: 1e3\r\n\r\n": b"400",
        b"X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n": b"400",
        b"X-Bare-CR: a\rb\r\nContent-Length: 0\r\n\r\n": b"400",
    }
    for tail, status in shapes.items():
        answer = raw_exchange(proxy.port, head + tail)
        assert answer.startswith(b"HTTP/1.1 " + status), (tail, answer[:80])
        assert b"Connection: close" in answer and b'"requestId"' in answer, answer
    assert raw_exchange(proxy.port, b"GET /locations HTTP/1.1\r\nAuthorization: Bearer t\r\n"
                        b"\r\n").startswith(b"HTTP/1.1 400"), "HTTP/1.1 without Host"
    assert raw_exchange(proxy.port, b"GET /locations HTTP/2.0\r\nHost: x\r\n\r\n") \
        .startswith(b"HTTP/1.1 505")
    assert raw_exchange(proxy.port, b"BREW /locations HTTP/1.1\r\nHost: x\r\n\r\n") \
        .startswith(b"HTTP/1.1 501")
    assert mock.counters()["total"] == 0, "nothing refused reached the upstream"
    assert proxy.request("GET", "/locations", token=TOKEN).status == 200, "still serving"


def test_oversized_headers_get_431(mock, start_proxy):
    proxy = start_proxy(mock.origin, env={"STPROXY_MAX_HEADER_SIZE": "4k"})
    answer = raw_exchange(proxy.port, b"GET /devices HTTP/1.1\r\nHost: x\r\nX-Big: " +
                          b"x" * 5000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    assert b'"RequestHeaderFieldsTooLargeError"' in answer


def test_pipelined_and_chunked_requests(mock, start_proxy):
    """Two requests in one write get two answers in order; a chunked command
    body reaches the upstream whole, with a Content-Length."""
    proxy = start_proxy(mock.origin)
    device = mock.device_ids(TOKEN)[0]
    auth = f"Authorization: Bearer {TOKEN}\r\nHost: x\r\n".encode()
    body = b'{"commands":[{"component":"main","capability":"switch","command":"on"}]}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    data = (b"GET /locations HTTP/1.1\r\n" + auth + b"\r\n" +
            f"POST /devices/{device}/commands HTTP/1.1\r\n".encode() + auth +
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked +
            b"GET /devices HTTP/1.1\r\n" + auth + b"Connection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(data)
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    # bodies end without a newline: the next status line follows straight on
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) [A-Z]", answer)
    assert statuses == [b"200", b"200", b"200"], answer[:300]
    last = mock.last_request()
    assert last["method"] == "GET" and last["uri"].startswith("/devices")
    assert mock.calls(f"/devices/{device}/commands", method="POST") == 1
    assert b"Connection: close" in answer.rsplit(b"HTTP/1.1 ", 1)[1], "the last one closes"


def test_http10_and_expect_continue(mock, start_proxy):
    proxy = start_proxy(mock.origin)
    answer = raw_exchange(proxy.port, f"GET /locations HTTP/1.0\r\nAuthorization: Bearer "
                                      f"{TOKEN}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer, answer[:200]
    device = mock.device_ids(TOKEN)[0]
    body = b'{"commands":[{"component":"main","capability":"switch","command":"off"}]}'
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(f"POST /devices/{device}/commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  f"{TOKEN}\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n"
                  .encode())
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_paths_outside_the_api_are_not_forwarded(mock, start_proxy):
    """Only the API's resource roots go upstream: a path under none of them is answered 404
    in the API's shape by the proxy itself."""
    proxy = start_proxy(mock.origin)
    for path in ("/", "/robots.txt", "/v1", "/v1/etc/passwd", "/admin/config", "/.env"):
        resp = proxy.request("GET", path, token=TOKEN)
        assert resp.status == 404, (path, resp.status)
        assert resp.json()["error"]["code"] == "NotFoundError"
    assert mock.counters()["total"] == 0, "none of them reached the upstream"
    assert proxy.metric("stproxy_target_refused_total") == 6
    assert proxy.request("GET", "/v1/locations", token=TOKEN).status == 200
