"""The mock API's rate limits (bench/mock/mock_limit.c), checked against the
mock directly: the throttling tests (test_throttle.py) trust what it counts,
so what it counts is tested here. Per-token and per-device fixed windows, the
X-RateLimit-* headers, the real API's 429 body, injected 429s, and the
records /counters and /arrivals report."""
import json
import re
import time

import pytest

TOKEN = "pat-mock-limits-0001"
OTHER = "pat-mock-limits-0002"
COMMAND_ON = json.dumps({"commands": [{"component": "main", "capability": "switch",
                                       "command": "on", "arguments": []}]})
RETRY = re.compile(r"^attempt (\d+) limit (\d+) - retry in (\d+) millis$")


def assert_real_429(resp, attempt, limit, max_retry_ms):
    """The body is exactly the real API's 429 (SMARTTHINGS.md); returns the
    retry milliseconds it names."""
    assert resp.status == 429, f"expected the mock's 429, got {resp.status} {resp.body!r}"
    doc = resp.json()
    assert set(doc) == {"requestId", "error"} and doc["requestId"], doc
    error = doc["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert (error["code"], error["message"]) == ("TooManyRequestError", "Too Many Requests")
    assert len(error["details"]) == 1, error
    detail = error["details"][0]
    assert set(detail) == {"code", "message", "details"} and detail["details"] == [], detail
    assert detail["code"] == "TooManyRequestError"
    m = RETRY.match(detail["message"])
    assert m, f"details[0].message must read 'attempt K limit N - retry in M millis': {detail}"
    assert (int(m.group(1)), int(m.group(2))) == (attempt, limit), detail["message"]
    retry = int(m.group(3))
    assert 0 <= retry <= max_retry_ms, detail["message"]
    assert resp.headers["X-RateLimit-Remaining"] == "0", "a 429 says Remaining 0"
    return retry


def rate_headers(resp):
    return tuple(resp.headers.get(f"X-RateLimit-{h}") for h in ("Limit", "Remaining", "Reset"))


def test_per_token_limit_headers_and_the_real_429(mock):
    mock.configure(rate_limit=3, rate_window_ms=1000)
    conn = mock.api_connection()
    seen = [mock.api_request("GET", "/devices", TOKEN, conn=conn) for _ in range(5)]
    assert [r.status for r in seen] == [200, 200, 200, 429, 429]
    for resp, remaining in zip(seen[:3], ("2", "1", "0")):
        limit, left, reset = rate_headers(resp)
        assert (limit, left) == ("3", remaining), rate_headers(resp)
        assert 0 < int(reset) <= 1000, f"Reset counts milliseconds by default: {reset}"
    retry = assert_real_429(seen[3], attempt=1, limit=3, max_retry_ms=1000)
    assert abs(int(seen[3].headers["X-RateLimit-Reset"]) - retry) <= 20, \
        "a 429's Reset and its retry-in agree"
    assert seen[3].headers["X-RateLimit-Limit"] == "3"
    assert_real_429(seen[4], attempt=2, limit=3, max_retry_ms=1000)
    # Another token has a window of its own.
    assert mock.api_request("GET", "/devices", OTHER).status == 200
    # The next window lets requests through again.
    time.sleep(retry / 1000 + 0.05)
    again = mock.api_request("GET", "/devices", TOKEN, conn=conn)
    assert again.status == 200 and rate_headers(again)[:2] == ("3", "2"), rate_headers(again)
    conn.close()
    counters = mock.counters()
    assert counters["rate_limited"] == 2
    assert counters["rate_limited_by_token"] == {TOKEN: 2, OTHER: 0}, \
        "the bench harness tells direct and proxied 429s apart by token"
    assert counters["by_status"] == {"200": 5, "429": 2}
    assert counters["max_in_window"] == {TOKEN: 5, OTHER: 1}, \
        "every arrival counts in its window, the 429s too"
    assert counters["max_in_sliding_window"][TOKEN] == 5


def test_reset_in_seconds_and_no_headers_without_a_limit(mock):
    assert rate_headers(mock.api_request("GET", "/locations", TOKEN)) == (None, None, None), \
        "no limit configured: no X-RateLimit headers"
    mock.configure(rate_limit=5, rate_window_ms=1500, reset_unit="s")
    resp = mock.api_request("GET", "/locations", TOKEN)
    assert rate_headers(resp) == ("5", "4", "2"), "1500 ms left rounds up to 2 s"
    assert mock.config()["reset_unit"] == "s"
    mock.configure(rate_limit=0)
    assert rate_headers(mock.api_request("GET", "/locations", TOKEN)) == (None, None, None), \
        "rate_limit=0 turns the limit off"


def test_device_limit_counts_status_and_commands_apart(mock):
    dev, other = mock.device_ids(TOKEN)[:2]
    mock.configure(device_limit=2, device_window_ms=5000)
    conn = mock.api_connection()

    def call(method, path, body=None):
        return mock.api_request(method, path, TOKEN, body=body, conn=conn,
                                headers={"Content-Type": "application/json"} if body else None)

    # Every status path style counts as one kind for its device.
    assert call("GET", f"/devices/{dev}/status").status == 200
    assert call("GET", f"/v1/devices/{dev}/components/main/status").status == 200
    limited = call("GET", f"/devices/{dev}/components/main/capabilities/switch/status")
    retry = assert_real_429(limited, attempt=1, limit=2, max_retry_ms=5000)
    assert limited.headers["X-RateLimit-Limit"] == "2", "a device 429 reports the device limit"
    assert abs(int(limited.headers["X-RateLimit-Reset"]) - retry) <= 20
    # Commands have their own count; other devices and other paths are not limited.
    assert call("POST", f"/devices/{dev}/commands", COMMAND_ON).status == 200
    assert call("POST", f"/v1/devices/{dev}/commands", COMMAND_ON).status == 200
    assert_real_429(call("POST", f"/devices/{dev}/commands", COMMAND_ON), 1, 2, 5000)
    assert call("GET", f"/devices/{other}/status").status == 200
    assert call("GET", f"/devices/{dev}").status == 200
    assert call("GET", f"/devices/{dev}/health").status == 200
    conn.close()
    counters = mock.counters()
    assert counters["device_max_in_window"] == {f"{TOKEN} {dev} status": 3,
                                                f"{TOKEN} {dev} command": 3,
                                                f"{TOKEN} {other} status": 1}
    assert counters["rate_limited"] == 2


def test_injected_429s_then_normal(mock):
    mock.configure(inject_429=2, inject_retry_ms=1500)
    conn = mock.api_connection()
    first = mock.api_request("GET", "/devices", TOKEN, conn=conn)
    second = mock.api_request("GET", "/scenes", OTHER)
    for resp in (first, second):
        assert assert_real_429(resp, attempt=1, limit=1, max_retry_ms=1500) == 1500, \
            "an injected 429 says exactly inject_retry_ms"
        assert resp.headers["X-RateLimit-Reset"] == "1500"
        assert "X-RateLimit-Limit" not in resp.headers, "no per-token limit is set"
    assert mock.api_request("GET", "/devices", TOKEN, conn=conn).status == 200
    conn.close()
    assert mock.config()["inject_429"] == 0, "the injection is used up"
    assert mock.counters()["rate_limited"] == 2
    assert [limited for _, limited in mock.arrivals(TOKEN)] == [True, False]


def test_changing_the_limit_applies_from_the_next_request(mock):
    mock.configure(rate_limit=10, rate_window_ms=10000)
    conn = mock.api_connection()
    for _ in range(3):
        assert mock.api_request("GET", "/devices", TOKEN, conn=conn).status == 200
    mock.configure(rate_limit=2)
    seen = [mock.api_request("GET", "/devices", TOKEN, conn=conn) for _ in range(3)]
    conn.close()
    assert [rate_headers(r)[:2] for r in seen[:2]] == [("2", "1"), ("2", "0")], \
        "the headers report the new limit, in a window that starts at the change"
    assert_real_429(seen[2], attempt=1, limit=2, max_retry_ms=10000)


def test_sliding_count_sees_what_fixed_windows_miss(mock):
    mock.configure(rate_window_ms=1000)
    conn = mock.api_connection()
    start = time.monotonic()
    mock.api_request("GET", "/locations", TOKEN, conn=conn)  # opens the window at ~0
    time.sleep(0.7)
    for _ in range(3):
        mock.api_request("GET", "/locations", TOKEN, conn=conn)
    time.sleep(max(0.0, start + 1.1 - time.monotonic()))
    for _ in range(3):
        mock.api_request("GET", "/locations", TOKEN, conn=conn)
    elapsed = time.monotonic() - start
    conn.close()
    if elapsed > 1.6:
        pytest.skip(f"the requests took too long ({elapsed:.2f} s) to place them in time")
    counters = mock.counters()
    assert counters["max_in_window"] == {TOKEN: 4}, "fixed windows [0,1) and [1,2): 4 and 3"
    assert counters["max_in_sliding_window"] == {TOKEN: 6}, \
        "the six requests from 0.7 s to 1.1 s fall in one interval of 1 s"
    arrivals = mock.arrivals(TOKEN)
    assert len(arrivals) == 7 and not any(limited for _, limited in arrivals)
    times = [ms for ms, _ in arrivals]
    assert times == sorted(times) and 650 <= times[1] - times[0] <= 900, times


def test_bad_values_are_refused_naming_the_key(mock):
    before = mock.config()
    for key, value in (("rate_limit", "-1"), ("rate_window_ms", "0"), ("device_limit", "x"),
                       ("device_window_ms", ""), ("reset_unit", "minutes"),
                       ("inject_429", "1.5"), ("inject_retry_ms", "-3")):
        code, body = mock.admin("POST", f"/config?rate_limit=5&{key}={value}")
        assert code == 400 and body["key"] == key, (key, code, body)
    assert mock.config() == before, "a refused change changes nothing"


def test_reset_clears_the_records_and_restarts_the_windows(mock):
    mock.configure(rate_limit=2, rate_window_ms=10000, device_limit=1)
    dev = mock.device_ids(TOKEN)[0]
    mock.api_request("GET", f"/devices/{dev}/status", TOKEN)
    assert mock.api_request("GET", "/devices", TOKEN).status == 429
    mock.reset()
    counters = mock.counters()
    for key in ("max_in_window", "max_in_sliding_window", "device_max_in_window"):
        assert counters[key] == {}, (key, counters)
    assert counters["rate_limited"] == 0 and mock.arrivals(TOKEN) == []
    resp = mock.api_request("GET", f"/devices/{dev}/status", TOKEN)
    assert resp.status == 200 and rate_headers(resp)[:2] == ("2", "1"), \
        "after /reset the token's window starts again"
