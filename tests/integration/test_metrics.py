"""/metrics for operators: every metric documented, requests by path class,
X-Cache and status, upstream answers by status and their latency."""
import os
import re

from harness import TOP_SRCDIR

TOKEN = "pat-metrics"


def samples(proxy):
    """{'name{labels}': value} of every sample /metrics renders."""
    out = {}
    for line in proxy.admin("/metrics")[1].splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_every_metric_is_documented_in_the_readme(mock, start_proxy):
    proxy = start_proxy(mock.origin)
    names = re.findall(r"^# TYPE (\S+) ", proxy.admin("/metrics")[1], re.M)
    assert len(names) > 30
    with open(os.path.join(TOP_SRCDIR, "README.md")) as f:
        readme = f.read()
    missing = [n for n in names if f"`{n}`" not in readme and f"`{n}{{" not in readme]
    assert not missing, f"README.md's metric table lacks {missing}"


def test_requests_by_route_class_cache_and_status(mock, start_proxy):
    proxy = start_proxy(mock.origin)
    device = mock.device_ids(TOKEN)[0]
    mock.reset()
    assert proxy.request("GET", f"/devices/{device}/status", token=TOKEN).cache == "MISS"
    assert proxy.request("GET", f"/devices/{device}/status", token=TOKEN).cache == "HIT"
    assert proxy.request("GET", "/devices/nowhere/status", token=TOKEN).status == 404
    body = b'{"commands":[{"component":"main","capability":"switch","command":"on"}]}'
    assert proxy.request("POST", f"/devices/{device}/commands", token=TOKEN,
                         body=body).status == 200
    assert proxy.request("GET", "/devices/../apps", token=TOKEN).status == 400
    s = samples(proxy)
    name = "stproxy_route_requests_total"
    assert s[f'{name}{{class="device_status",cache="MISS",code="200"}}'] == 1
    assert s[f'{name}{{class="device_status",cache="HIT",code="200"}}'] == 1
    assert s[f'{name}{{class="device_status",cache="MISS",code="404"}}'] == 1
    assert s[f'{name}{{class="device_commands",cache="BYPASS",code="200"}}'] == 1
    assert s[f'{name}{{class="none",cache="none",code="400"}}'] == 1
    assert sum(v for k, v in s.items() if k.startswith(name + "{")) == 5
    # Three exchanges reached the upstream: two reads and the command. Reads are timed too.
    assert s['stproxy_upstream_responses_total{code="200"}'] == 2
    assert s['stproxy_upstream_responses_total{code="404"}'] == 1
    assert s["stproxy_upstream_duration_seconds_count"] == 3 == mock.counters()["total"]
