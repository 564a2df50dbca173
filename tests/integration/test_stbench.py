"""bench/stbench, the benchmarks' load generator, measured against what the
mock and the proxy themselves count: if its figures were wrong, every
benchmark table would be."""
import json
import os
import subprocess

from harness import TOP_BUILDDIR

STBENCH = os.path.join(TOP_BUILDDIR, "bench", "stbench")
TOKEN = "pat-stbench"


def stbench(*args):
    out = subprocess.run([STBENCH, "--json", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_closed_loop_counts_what_the_proxy_answered(mock, start_proxy):
    proxy = start_proxy(mock.origin)
    device = mock.device_ids(TOKEN)[0]
    run = stbench("-c", "4", "-d", "1", "-t", TOKEN,
                  f"http://127.0.0.1:{proxy.port}/devices/{device}/status")
    assert run["mode"] == "closed" and run["errors"] == 0 and run["requests"] > 10
    assert run["status"] == {"200": run["requests"]}
    assert run["x_cache"].get("HIT", 0) + run["x_cache"].get("MISS", 0) == run["requests"]
    answered = sum(float(line.rpartition(" ")[2])
                   for line in proxy.admin("/metrics")[1].splitlines()
                   if line.startswith('stproxy_route_requests_total{class="device_status"'))
    assert answered == run["requests"], "every answer stbench counted, and no other"
    assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p99"] <= run["latency_ms"]["max"]


def test_once_sends_every_request_at_the_same_moment(start_mock, start_proxy):
    mock = start_mock(latency_ms=300)
    proxy = start_proxy(mock.origin)
    device = mock.device_ids(TOKEN)[0]
    mock.reset()
    run = stbench("--once", "-c", "100", "-t", TOKEN,
                  "--mock-admin", f"http://127.0.0.1:{mock.admin_port}",
                  f"http://127.0.0.1:{proxy.port}/devices/{device}/status")
    assert run["requests"] == 100 and run["errors"] == 0
    assert run["upstream"] == {"calls": 1, "rate_limited": 0}, run
    # All 100 waited on the one 300 ms upstream call: sent together, not one after another.
    assert run["latency_ms"]["max"] < 2 * 300, run["latency_ms"]


def test_mix_direct_over_tls_counts_the_mocks_429s(start_mock, pki):
    mock = start_mock(devices=6)
    mock.configure(rate_limit=20, rate_window_ms=60000)
    run = stbench("--mix", "--integrations", "3", "--devices", "5", "--interval", "0.3-0.6",
                  "--command-every", "0.5", "-d", "2", "-t", TOKEN, "--cacert", pki.ca,
                  "--mock-admin", f"http://127.0.0.1:{mock.admin_port}",
                  f"https://127.0.0.1:{mock.api_port}/")
    counters = mock.counters()
    assert run["mode"] == "mix" and run["errors"] == 0
    # The device discovery is one call before the counters are first read.
    assert run["upstream"]["calls"] == counters["by_token"][TOKEN] - 1 == run["requests"]
    assert run["upstream"]["rate_limited"] == counters["rate_limited_by_token"][TOKEN]
    assert run["status"]["429"] == run["upstream"]["rate_limited"] > 0
    assert set(run["kinds"]) >= {"list", "status", "health", "command"}, run["kinds"]
