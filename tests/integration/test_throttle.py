"""Throttling per credential (issue 4): many consumers, one token, zero 429s.

The mock enforces the upstream's limits (per token and per device, in fixed
windows, with the real API's headers and 429 body) and records, per token, the
most requests it saw in any interval of the window (max_in_sliding_window),
which is the bound the proxy promises: STPROXY_BUDGET=N/W means at most N
upstream requests in ANY interval of W. Windows are short (2 s) so that the
whole file stays near a minute and a half.

Settings used (environment): STPROXY_BUDGET, STPROXY_DEVICE_BUDGET,
STPROXY_QUEUE_TIMEOUT, STPROXY_QUEUE_MAX and the STPROXY_CACHE_<CLASS> policies.
Shared mode (one key per client) where fairness between clients is the point;
pass-through with one token elsewhere.
"""
import collections
import json
import re
import statistics
import threading
import time

import pytest

from harness import cache_env, sleep_until, wait_for

UPSTREAM = "pat-throttle-shared-5b7e21"  # the credential the proxy holds in shared mode
TOKEN = "pat-throttle-0001"  # pass-through
COMMAND_ON = json.dumps({"commands": [{"component": "main", "capability": "switch",
                                       "command": "on", "arguments": []}]})
JSON = {"Content-Type": "application/json"}
WINDOW = 2.0  # seconds: the W of every budget below


def budgets(budget, device_budget="1000/2s", **extra):
    """The throttling environment; the device budget is out of the way unless
    a test is about it."""
    return {"STPROXY_BUDGET": budget, "STPROXY_DEVICE_BUDGET": device_budget, **extra}


def client_keys(n):
    return {f"client{i:02d}": f"key-{i:02d}-c4a81e9f3b" for i in range(n)}


def shared_env(keys):
    return {"STPROXY_TOKEN": UPSTREAM,
            "STPROXY_CLIENT_KEYS": ",".join(f"{name}:{key}" for name, key in keys.items())}


# ---- clients -----------------------------------------------------------------------------

Result = collections.namedtuple("Result", "sent done status cache retry_after body error")


class Client(threading.Thread):
    """One consumer: its own keep-alive connection, requests back to back
    (cycling through paths) until stopped. Every answer is recorded with its
    monotonic send and answer times; a request that raised is recorded with
    status None."""

    def __init__(self, proxy, token, paths, method="GET", body=None, headers=None):
        super().__init__(daemon=True)
        self.proxy, self.token, self.paths = proxy, token, paths
        self.method, self.body = method, body
        self.headers = dict(headers or {})
        self.headers["Authorization"] = f"Bearer {token}"
        self.results = []
        self.stopping = threading.Event()

    def run(self):
        conn, i = None, 0
        while not self.stopping.is_set():
            path = self.paths[i % len(self.paths)]
            i += 1
            if conn is None:
                conn = self.proxy.connection(timeout=15)
            sent = time.monotonic()
            try:
                conn.request(self.method, path, body=self.body, headers=self.headers)
                resp = conn.getresponse()
                body = resp.read()
                self.results.append(Result(sent, time.monotonic(), resp.status,
                                           resp.getheader("X-Cache"),
                                           resp.getheader("Retry-After"),
                                           body if resp.status != 200 else b"", None))
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as exc:  # recorded; the test says what it means
                self.results.append(Result(sent, time.monotonic(), None, None, None, b"",
                                           repr(exc)))
                conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    def answered(self, since=float("-inf"), until=float("inf")):
        """Answers (200s) that arrived in [since, until). A 429 the proxy made
        is not an answer."""
        return [r for r in self.results if r.status == 200 and since <= r.done < until]


def start_all(clients):
    t0 = time.monotonic()
    for c in clients:
        c.start()
    return t0


def stop_all(clients, timeout=20):
    """Stops every client after the request it is in (queued ones included)."""
    for c in clients:
        c.stopping.set()
    for c in clients:
        c.join(timeout)
    stuck = [c for c in clients if c.is_alive()]
    assert not stuck, f"{len(stuck)} clients still waited for an answer {timeout} s after stop"


def all_results(clients):
    return [r for c in clients for r in c.results]


def status_counts(results):
    return dict(collections.Counter(r.status if r.status is not None else r.error
                                    for r in results))


def upstream_calls(mock, suffix="/status", method="GET"):
    """{path: count} of the mock's calls whose path ends with suffix."""
    return {k.split(" ", 1)[1]: v for k, v in mock.counters()["by_path"].items()
            if k.startswith(method + " ") and k.endswith(suffix)}


def assert_within_limit(mock, token, limit, what):
    """The mock saw no 429 and never more than limit requests of token in any
    interval of its window."""
    counters = mock.counters()
    sliding = counters["max_in_sliding_window"].get(token, 0)
    assert counters["rate_limited"] == 0, \
        f"{what}: the upstream answered {counters['rate_limited']} 429s (by status " \
        f"{counters['by_status']}); the proxy must pace the credential so it never meets one"
    assert sliding <= limit, \
        f"{what}: the upstream saw {sliding} requests of one credential within one " \
        f"{WINDOW:g} s interval; the budget allows at most {limit} in ANY such interval"
    return counters


def assert_proxy_429(resp_status, body, retry_after, what):
    """A 429 the proxy made: the API's error shape and a Retry-After in whole
    seconds, at least 1."""
    assert resp_status == 429, f"{what}: expected the proxy's 429, got {resp_status} {body!r}"
    doc = json.loads(body)
    assert set(doc) >= {"requestId", "error"} and doc["requestId"], \
        f"{what}: a throttled answer uses the API's error shape: {doc}"
    assert doc["error"].get("code") == "TooManyRequestError" and doc["error"].get("message"), \
        f"{what}: error.code must be TooManyRequestError with a message: {doc}"
    assert doc["error"].get("details") == [], f"{what}: error.details must be []: {doc}"
    assert retry_after is not None and re.fullmatch(r"\d+", retry_after), \
        f"{what}: a throttled answer carries Retry-After in whole seconds, got {retry_after!r}"
    assert int(retry_after) >= 1, f"{what}: Retry-After must be at least 1, got {retry_after}"
    return int(retry_after)


# ---- 1. many clients, one credential --------------------------------------------------------

def test_twenty_pollers_share_one_credential_without_a_429(start_mock, start_proxy):
    """20 clients (one key each) poll 20 devices' status as fast as they can
    for three windows after a warm-up window, with the mock enforcing the
    proxy's own budget (30/2s) and device budget (6/2s): no 429 upstream, never
    more than 30 in any 2 s, every client answered throughout, and the fresh
    answers shared fairly."""
    n, limit, device_limit = 20, 30, 6
    mock = start_mock(devices=n, tokens=[UPSTREAM])
    devices = mock.device_ids(UPSTREAM)
    keys = client_keys(n)
    proxy = start_proxy(mock.origin, env={**budgets(f"{limit}/2s", f"{device_limit}/2s"),
                                          **shared_env(keys),
                                          **cache_env(DEVICE_STATUS="1s,10s")})
    mock.configure(rate_limit=limit, rate_window_ms=int(WINDOW * 1000),
                   device_limit=device_limit, device_window_ms=int(WINDOW * 1000))
    mock.reset()
    clients = [Client(proxy, key, [f"/devices/{dev}/status"])
               for key, dev in zip(keys.values(), devices)]
    t0 = start_all(clients)
    measured = t0 + WINDOW  # the first window warms the cache up
    sleep_until(measured + 3 * WINDOW)
    stop_all(clients)

    counters = assert_within_limit(mock, UPSTREAM, limit, "20 pollers on one credential")
    worst_device = max(counters["device_max_in_window"].values(), default=0)
    assert worst_device <= device_limit, \
        f"a device's status was fetched {worst_device} times in one {WINDOW:g} s window; " \
        f"the device budget is {device_limit}"
    fetched = upstream_calls(mock)
    assert sum(fetched.values()) >= 1.5 * limit, \
        f"only {sum(fetched.values())} status fetches reached the upstream in four windows " \
        f"of a {limit}-request budget: the proxy must use its budget, not just sit on stale data"

    names = list(keys)
    for name, c in zip(names, clients):
        for k in range(3):
            since = measured + k * WINDOW
            got = len(c.answered(since, since + WINDOW))
            assert got >= 3, \
                f"{name} got only {got} answers (200: HIT, STALE or MISS) in window {k + 1}; " \
                f"every client keeps getting answers while the budget is spent " \
                f"(its results: {status_counts(c.results)})"
    fresh = [sum(1 for r in c.answered(measured) if r.cache in ("MISS", "HIT")) for c in clients]
    mean = statistics.mean(fresh)
    assert mean > 0, "no client got a single fresh answer: the cache was never refreshed"
    starved = {name: f for name, f in zip(names, fresh) if f < mean / 2}
    assert not starved, \
        f"clients with fewer than half the mean fresh answers (mean {mean:.1f}): {starved}; " \
        f"the budget must be shared fairly between clients (all: {dict(zip(names, fresh))})"
    per_device = [fetched.get(f"/devices/{dev}/status", 0) for dev in devices]
    device_mean = statistics.mean(per_device)
    assert min(per_device) >= device_mean / 2, \
        f"upstream refreshes per client's device {per_device} (mean {device_mean:.1f}): " \
        f"some client got less than half the mean share of the budget"


def test_a_greedy_client_cannot_starve_a_polite_one(start_mock, start_proxy):
    """Status caching off, budget 6/2s: one client keeps 8 requests waiting,
    another keeps 1. Served round-robin by client, the polite one gets about
    half of what is admitted; in arrival order it would get a ninth."""
    mock = start_mock(devices=9, tokens=[UPSTREAM])
    devices = mock.device_ids(UPSTREAM)
    keys = {"greedy": "key-greedy-71d0c2e5", "polite": "key-polite-0a9f4b33"}
    proxy = start_proxy(mock.origin, env={**budgets("6/2s", STPROXY_QUEUE_TIMEOUT="8s"),
                                          **shared_env(keys), **cache_env(DEVICE_STATUS="0")})
    mock.configure(rate_limit=6, rate_window_ms=2000)
    mock.reset()
    greedy = [Client(proxy, keys["greedy"], [f"/devices/{d}/status"]) for d in devices[:8]]
    polite = Client(proxy, keys["polite"], [f"/devices/{devices[8]}/status"])
    t0 = start_all(greedy + [polite])
    sleep_until(t0 + 3 * WINDOW)
    end = time.monotonic()
    stop_all(greedy + [polite])

    assert_within_limit(mock, UPSTREAM, 6, "a greedy and a polite client")
    # Only answers while both were asking: after the stop the greedy client's
    # queued requests drain alone, which says nothing about fairness.
    mine = len(polite.answered(t0 + WINDOW, end))
    theirs = len([r for c in greedy for r in c.answered(t0 + WINDOW, end)])
    assert mine + theirs >= 4, f"too few answers to judge ({mine} + {theirs})"
    assert mine >= 0.35 * (mine + theirs), \
        f"the polite client got {mine} of {mine + theirs} answers while the greedy one kept 8 " \
        f"requests queued; clients must be served round-robin, not in arrival order"


# ---- 2. commands first -----------------------------------------------------------------------

def test_command_is_admitted_ahead_of_queued_reads(start_mock, start_proxy):
    """Budget 6/2s, status caching off, 10 readers of one credential keep the
    queue full; a command sent then goes before the reads already waiting."""
    mock = start_mock(devices=12)
    devices = mock.device_ids(TOKEN)
    proxy = start_proxy(mock.origin, env={**budgets("6/2s", STPROXY_QUEUE_TIMEOUT="8s"),
                                          **cache_env(DEVICE_STATUS="0")})
    mock.reset()
    readers = [Client(proxy, TOKEN, [f"/devices/{d}/status"]) for d in devices[:10]]
    start_all(readers)
    time.sleep(1.5 * WINDOW)  # the queue fills: 10 waiting reads, 3 admitted per second
    sent = time.monotonic()
    command = proxy.request("POST", f"/devices/{devices[11]}/commands", body=COMMAND_ON,
                            headers=JSON, token=TOKEN)
    answered = sent + command.elapsed
    time.sleep(0.3)
    stop_all(readers)

    assert command.status == 200, \
        f"the command was not carried out: {command.status} {command.body!r}"
    assert mock.calls(f"/devices/{devices[11]}/commands", method="POST") == 1, \
        "the upstream must have seen the command exactly once"
    waiting = [r for r in all_results(readers) if r.sent < sent < r.done]
    assert len(waiting) >= 6, \
        f"only {len(waiting)} reads were waiting when the command came: the readers did not " \
        f"saturate the budget, so the test proves nothing ({status_counts(all_results(readers))})"
    median_wait = statistics.median(r.done - r.sent for r in waiting)
    assert median_wait > 1.0, \
        f"the reads waiting when the command came took {median_wait:.2f} s (median): they were " \
        f"not queued for budget (10 readers on 6/2s should wait about 3 s), so the test proves " \
        f"nothing"
    assert command.elapsed < median_wait / 2, \
        f"the command took {command.elapsed:.2f} s while the reads queued before it took " \
        f"{median_wait:.2f} s (median): commands must be admitted before queued reads"
    ahead = [r for r in waiting if r.done < answered]
    assert len(ahead) <= 2, \
        f"{len(ahead)} of the {len(waiting)} reads queued before the command were answered " \
        f"before it; commands go first (one read may already be on its way upstream)"


def test_stale_refreshes_leave_budget_for_reads_a_client_waits_on(start_mock, start_proxy):
    """Pollers keep every status entry stale, so refreshes would spend each device's budget as
    it comes; a command then invalidates a device and the next read must go upstream. With a
    queue deadline shorter than the device budget's interval, that read gets budget only if
    the refreshes left some: they may use all but a reserve (a quarter of the burst, at least
    one request). The bench's integration mix found reads 429'd this way."""
    mock = start_mock(devices=4)
    devices = mock.device_ids(TOKEN)
    # 8/4s: a burst of 2, then one request per 680 ms; reads may wait 300 ms at most.
    proxy = start_proxy(mock.origin, env={**budgets("1000/2s", "8/4s",
                                                    STPROXY_QUEUE_TIMEOUT="300ms"),
                                          **cache_env(DEVICE_STATUS="100ms,60s")})
    paths = [f"/devices/{d}/status" for d in devices]
    for path in paths:
        assert proxy.request("GET", path, token=TOKEN).status == 200
    pollers = [Client(proxy, TOKEN, paths) for _ in range(3)]
    start_all(pollers)
    reads_after_commands = []
    try:
        for round_ in range(4):
            time.sleep(1.0)  # stale polling: refreshes compete for every device's budget
            for device, path in zip(devices, paths):
                assert proxy.request("POST", f"/devices/{device}/commands", body=COMMAND_ON,
                                     headers=JSON, token=TOKEN).status == 200
                reads_after_commands.append(proxy.request("GET", path, token=TOKEN))
    finally:
        stop_all(pollers)
    statuses = collections.Counter(r.status for r in reads_after_commands)
    assert statuses == {200: 16}, \
        f"reads after a command (nothing cached, a client waiting): {dict(statuses)}"
    assert proxy.metric("stproxy_throttle_stale_total") > 0, \
        "refreshes were held back at some point, or the test proves nothing"
    polled = status_counts(all_results(pollers))
    assert polled.get(429, 0) == 0, f"the pollers saw the proxy's 429s: {polled}"


# ---- 3. learning from the upstream ------------------------------------------------------------

def test_a_lowered_upstream_limit_is_adopted_within_one_window(start_mock, start_proxy):
    """Proxy and mock at 40/2s, 8 readers with status caching off. The mock
    lowers its limit to 10 (its X-RateLimit-Limit says so). One window is
    allowed for adapting; over the two windows after it the upstream sees at
    most 10 in any 2 s, no 429, and still gets used."""
    mock = start_mock(devices=8)
    devices = mock.device_ids(TOKEN)
    proxy = start_proxy(mock.origin, env={**budgets("40/2s"), **cache_env(DEVICE_STATUS="0")})
    mock.configure(rate_limit=40, rate_window_ms=2000)
    mock.reset()
    readers = [Client(proxy, TOKEN, [f"/devices/{d}/status"]) for d in devices]
    t0 = start_all(readers)
    sleep_until(t0 + WINDOW)
    before = mock.counters()
    mock.configure(rate_limit=10)
    changed = time.monotonic()
    sleep_until(changed + WINDOW)  # the window the proxy has to adapt in
    adapting = mock.counters()
    mock.reset()  # from here on every interval must hold at most 10
    checked = time.monotonic()
    sleep_until(checked + 2 * WINDOW)
    after = mock.counters()
    stop_all(readers)

    used = before["max_in_sliding_window"].get(TOKEN, 0)
    assert used > 15, \
        f"before the change the upstream saw at most {used} requests in {WINDOW:g} s: the " \
        f"readers must press the old budget of 40 for the lower limit to matter"
    sliding = after["max_in_sliding_window"].get(TOKEN, 0)
    assert sliding <= 10, \
        f"one window after the upstream lowered its limit to 10 (X-RateLimit-Limit: 10), the " \
        f"proxy still sent {sliding} requests within {WINDOW:g} s; a reported limit below the " \
        f"budget must lower the budget (adaptation window: {adapting['total']} requests, " \
        f"{adapting['rate_limited']} 429s)"
    assert after["rate_limited"] == 0, \
        f"the upstream answered {after['rate_limited']} 429s after the adaptation window"
    assert after["total"] >= 10, \
        f"only {after['total']} upstream requests in the two windows after adapting: the proxy " \
        f"must keep using the lowered budget (10 per {WINDOW:g} s), not stop"
    served = [r for c in readers for r in c.answered(checked)]
    assert len(served) >= 10, f"readers got only {len(served)} answers after adapting"


@pytest.mark.parametrize("reset_unit", ["ms", "s"])
def test_an_upstream_429_pauses_the_credential_until_the_reset(start_mock, start_proxy,
                                                               reset_unit):
    """The mock answers one request 429 "retry in 1500 millis" (X-RateLimit-Reset
    1500 in ms, or 2 in s). The proxy sends nothing more for that credential
    until the reset, then resumes; meanwhile clients get stale answers or wait
    in the queue, with no storm of errors."""
    mock = start_mock(devices=5)
    devices = mock.device_ids(TOKEN)
    proxy = start_proxy(mock.origin, env={
        **budgets("200/2s"), **cache_env(DEVICE_STATUS="300ms,30s", COMPONENT_STATUS="0")})
    for d in devices[:4]:
        assert proxy.request("GET", f"/devices/{d}/status", token=TOKEN).status == 200
    mock.configure(reset_unit=reset_unit)
    stale_readers = [Client(proxy, TOKEN, [f"/devices/{d}/status"]) for d in devices[:4]]
    # Never cached: every one of its reads needs the upstream, so it queues during the pause.
    queued_reader = Client(proxy, TOKEN, [f"/devices/{devices[4]}/components/main/status"])
    clients = stale_readers + [queued_reader]
    start_all(clients)
    time.sleep(0.7)
    mock.reset()
    zero = time.monotonic()  # the mock's time 0 for arrivals(), give or take a millisecond
    mock.configure(inject_429=1, inject_retry_ms=1500)
    time.sleep(3.5)
    stop_all(clients)

    arrivals = mock.arrivals(TOKEN)
    limited = [ms for ms, was in arrivals if was]
    assert len(limited) == 1, f"exactly one injected 429 was expected, saw {len(limited)}"
    hit = limited[0]
    # Requests already on their way when the 429 came back may still arrive just after it.
    during = [round(ms - hit) for ms, _ in arrivals if hit + 150 < ms < hit + 1350]
    assert not during, \
        f"the upstream answered 429 'retry in 1500 millis' (Reset in {reset_unit}), yet the " \
        f"proxy sent {len(during)} more requests for that credential during the pause, at " \
        f"+{during[:10]} ms; it must pause the credential until the reset"
    later = [ms for ms, _ in arrivals if ms >= hit + 1350]
    assert later and later[0] < hit + 3000, \
        f"after the 1.5 s pause the proxy must resume (first request after the 429 at " \
        f"{'+%d ms' % (later[0] - hit) if later else 'never'})"

    pause_from, pause_to = zero + hit / 1000, zero + (hit + 1500) / 1000
    for i, c in enumerate(stale_readers):
        got = [r for r in c.answered(pause_from, pause_to)]
        assert len(got) >= 3, \
            f"stale reader {i} got {len(got)} answers during the pause: cached entries must " \
            f"be served (STALE) while the credential is paused"
    errors = [r for r in all_results(clients)
              if r.status != 200 and pause_from - 0.2 <= r.done <= pause_to + 0.5]
    assert len(errors) <= 2, \
        f"{len(errors)} errors reached clients around the pause " \
        f"({status_counts(errors)}): clients get stale or queued answers, not an error storm"
    assert queued_reader.answered(pause_to, pause_to + 1.5), \
        "the reader that needs the upstream got no answer in the 1.5 s after the pause"


# ---- 4 and 5. several processes, one limit ---------------------------------------------------

@pytest.fixture(params=["one-process-no-redis", "two-processes-one-redis"])
def layout(request):
    """(how many proxies, their store environment). Listed before start_proxy
    so that Redis outlives the proxies."""
    if request.param == "two-processes-one-redis":
        redis_server = request.getfixturevalue("start_redis")()
        return 2, {"STPROXY_REDIS": redis_server.url}
    return 1, {}


def test_processes_together_stay_within_one_credentials_limit(layout, start_mock, start_proxy):
    """Budget 20/2s in each process, the mock's limit 20/2s, 8 readers with
    status caching off spread over the processes for three windows: the mock
    sees no 429 and never more than 20 in any 2 s, and every process serves."""
    n_proxies, store = layout
    mock = start_mock(devices=8)
    devices = mock.device_ids(TOKEN)
    proxies = [start_proxy(mock.origin, env={**budgets("20/2s"), **store,
                                             **cache_env(DEVICE_STATUS="0")})
               for _ in range(n_proxies)]
    mock.configure(rate_limit=20, rate_window_ms=2000)
    mock.reset()
    readers = [Client(proxies[i % n_proxies], TOKEN, [f"/devices/{d}/status"])
               for i, d in enumerate(devices)]
    t0 = start_all(readers)
    sleep_until(t0 + 3 * WINDOW)
    stop_all(readers)

    what = f"{n_proxies} process(es)" + (" sharing one Redis" if store else " without Redis")
    counters = assert_within_limit(mock, TOKEN, 20, what)
    assert counters["total"] >= 20, \
        f"{what}: only {counters['total']} upstream requests in three windows of a 20-request " \
        f"budget; the budget must be used, not just respected"
    for p in range(n_proxies):
        served = [r for i, c in enumerate(readers) if i % n_proxies == p for r in c.answered()]
        assert len(served) >= 3, \
            f"{what}: process {p} answered only {len(served)} reads: each process must get " \
            f"a share of the budget"


# ---- 6. nothing can be served in time ----------------------------------------------------------

def test_429_with_retry_after_when_the_queue_deadline_passes(mock, start_proxy):
    """Budget 2/10s, status caching off, queue timeout 1 s: the third status
    read cannot be admitted in time and gets the proxy's 429 with Retry-After,
    within about a second; the upstream never sees it."""
    devices = mock.device_ids(TOKEN)
    proxy = start_proxy(mock.origin, env={**budgets("2/10s", STPROXY_QUEUE_TIMEOUT="1s"),
                                          **cache_env(DEVICE_STATUS="0")})
    mock.reset()
    first = proxy.request("GET", f"/devices/{devices[0]}/status", token=TOKEN)
    assert first.status == 200 and first.elapsed < 0.5, \
        f"the first read of a fresh budget goes at once, got {first.status} in " \
        f"{first.elapsed:.2f} s"
    second = proxy.request("GET", f"/devices/{devices[1]}/status", token=TOKEN)
    third = proxy.request("GET", f"/devices/{devices[2]}/status", token=TOKEN)
    retry_after = assert_proxy_429(third.status, third.body, third.headers.get("Retry-After"),
                                   "a third read within 10 s of a 2/10s budget")
    assert retry_after <= 11, f"Retry-After {retry_after} s is beyond the 10 s window"
    assert third.elapsed <= 1.6, \
        f"the 429 came after {third.elapsed:.2f} s; the queue timeout is 1 s"
    if second.status != 200:  # a budget with a burst of one: the second waits too
        assert_proxy_429(second.status, second.body, second.headers.get("Retry-After"),
                         "the second read")
    forwarded = sum(upstream_calls(mock).values())
    served = sum(1 for r in (first, second, third) if r.status == 200)
    assert forwarded == served, \
        f"the upstream saw {forwarded} status reads for {served} answered; a throttled read " \
        f"must never reach it"
    assert mock.counters()["rate_limited"] == 0


def test_a_full_queue_rejects_at_once(mock, start_proxy):
    """Budget 1/2s, queue of 2: with two reads waiting, a third is refused at
    once; the two waiting ones are served when the budget allows."""
    devices = mock.device_ids(TOKEN)
    proxy = start_proxy(mock.origin, env={**budgets("1/2s", STPROXY_QUEUE_MAX="2",
                                                    STPROXY_QUEUE_TIMEOUT="6s"),
                                          **cache_env(DEVICE_STATUS="0")})
    assert proxy.request("GET", f"/devices/{devices[0]}/status", token=TOKEN).status == 200
    waiting = [None, None]

    def wait_in_queue(i):
        waiting[i] = proxy.request("GET", f"/devices/{devices[1 + i]}/status", token=TOKEN)

    threads = [threading.Thread(target=wait_in_queue, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    extra = proxy.request("GET", f"/devices/{devices[3]}/status", token=TOKEN)
    assert_proxy_429(extra.status, extra.body, extra.headers.get("Retry-After"),
                     "a read arriving at a full queue (STPROXY_QUEUE_MAX=2)")
    assert extra.elapsed < 0.5, \
        f"a full queue must refuse at once, the 429 took {extra.elapsed:.2f} s"
    for t in threads:
        t.join(15)
    assert [w.status if w else None for w in waiting] == [200, 200], \
        "the two queued reads are served once the budget allows (within the 6 s timeout)"
    assert sorted(w.elapsed for w in waiting)[1] > 1.0, \
        "the queued reads really waited for budget (1 per 2 s)"


# ---- 7. what the operator sees -----------------------------------------------------------------

STARTS = re.compile(r"over (its |the )?budget|(start|begin)\w* (being )?throttl|"
                    r"throttl\w* (start|begin)", re.I)
STOPS = re.compile(r"within (its |the )?budget|no longer throttl|unthrottl|"
                   r"(stop|end)\w* (being )?throttl|throttl\w* (stop|end)", re.I)


def burst(proxy, paths, token=TOKEN):
    """One request per path, all at once, each on its own connection."""
    results = [None] * len(paths)

    def one(i):
        try:
            results[i] = proxy.request("GET", paths[i], token=token)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return results


def throttle_lines(log):
    """(lines saying a credential is throttled, lines saying it no longer is);
    access lines are left out."""
    lines = [ln for ln in log.splitlines() if not re.search(r"\baccess client=", ln)]
    return [ln for ln in lines if STARTS.search(ln)], [ln for ln in lines if STOPS.search(ln)]


def test_throttle_metrics_and_one_log_line_each_way_per_episode(start_mock, start_proxy):
    """Budget 3/2s, status caching off, queue deadline 2.5 s (longer than the
    gap to the next admission, shorter than the queue needs): two bursts of 7
    reads, each an episode of throttling with admissions, waits and 429s. The
    metrics are there and move; the log says once per episode that the
    credential is throttled and once that it no longer is."""
    mock = start_mock(devices=7)
    devices = mock.device_ids(TOKEN)
    proxy = start_proxy(mock.origin, env={**budgets("3/2s", STPROXY_QUEUE_TIMEOUT="2500ms"),
                                          **cache_env(DEVICE_STATUS="0")})
    text = proxy.admin("/metrics")[1]
    for name in ("stproxy_throttle_admitted_total", "stproxy_throttle_queued_total",
                 "stproxy_throttle_queue_wait_seconds_bucket", "stproxy_throttle_stale_total",
                 "stproxy_throttle_rejected_total", "stproxy_upstream_429_total",
                 "stproxy_throttle_queue_depth"):
        assert name in text, f"/metrics lacks {name}"
    paths = [f"/devices/{d}/status" for d in devices]
    log_start = len(proxy.output())

    episodes = []
    for episode in (1, 2):
        results = burst(proxy, paths)
        statuses = [getattr(r, "status", r) for r in results]
        assert statuses.count(200) >= 2 and statuses.count(429) >= 1, \
            f"episode {episode}: 7 reads at once on a 3/2s budget with a 2.5 s queue " \
            f"deadline give 200s (at most 6 fit) and at least one 429, got {statuses}"
        wait_for(lambda: len(throttle_lines(proxy.output()[log_start:])[1]) >= episode,
                 timeout=3 * WINDOW + 2,
                 what=f"the log line saying the credential is no longer throttled "
                      f"(episode {episode})")
        starts, stops = throttle_lines(proxy.output()[log_start:])
        assert (len(starts), len(stops)) == (episode, episode), \
            f"after {episode} throttling episode(s) the log must have {episode} line(s) " \
            f"saying the credential is throttled and as many saying it no longer is; got " \
            f"starts={starts} stops={stops}"
        episodes.append({m: proxy.metric(m) for m in (
            "stproxy_throttle_admitted_total", "stproxy_throttle_queued_total",
            "stproxy_throttle_rejected_total", "stproxy_throttle_queue_wait_seconds_count")})
        assert proxy.metric("stproxy_throttle_queue_depth") == 0, \
            "the queue depth gauge goes back to 0 when nothing waits"
        time.sleep(WINDOW)

    first, second = episodes
    assert first["stproxy_throttle_admitted_total"] >= 1, f"nothing counted as admitted: {first}"
    assert first["stproxy_throttle_queued_total"] >= 1, f"nothing counted as queued: {first}"
    assert first["stproxy_throttle_rejected_total"] >= 1, \
        f"reads were refused, the counter says {first}"
    assert first["stproxy_throttle_queue_wait_seconds_count"] >= 1, \
        f"the queue wait histogram observed nothing: {first}"
    for name in first:
        assert second[name] > first[name], f"{name} did not move in the second episode: " \
                                           f"{first[name]} then {second[name]}"
    for line in throttle_lines(proxy.output())[0] + throttle_lines(proxy.output())[1]:
        assert TOKEN not in line, f"a log line shows the token: {line}"

    mock.configure(inject_429=1, inject_retry_ms=300)
    before = proxy.metric("stproxy_upstream_429_total")
    proxy.request("GET", paths[0], token=TOKEN)
    assert proxy.metric("stproxy_upstream_429_total") == before + 1, \
        "an upstream 429 must count in stproxy_upstream_429_total"
