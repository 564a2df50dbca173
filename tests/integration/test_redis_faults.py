"""Redis faults under load (issue 8): Redis paused (DEBUG SLEEP), stopped as in a network
partition (SIGSTOP: connections stay open, nothing answers), and answering errors (out of
memory for every write). Requests keep succeeding throughout, within the client's patience,
and the proxy uses Redis again when it recovers. Killing and restarting Redis is
test_cache_redis.py's."""
import os
import signal
import threading
import time

import pytest

from harness import cache_env, wait_for

TOKEN = "pat-redis-faults-0001"


def load(proxy, paths, seconds, fault, heal, at=1.0, lasting=2.0):
    """3 keep-alive clients loop GETs for `seconds`; fault() at `at`, heal() after `lasting`.
    Returns (answers, failures, slowest answer in seconds)."""
    stop = threading.Event()
    failures, answers, slowest = [], [0], [0.0]

    def client(n):
        conn, i = proxy.connection(timeout=10), n
        while not stop.is_set():
            path = paths[i % len(paths)]
            i += 1
            started = time.monotonic()
            try:
                conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
                resp = conn.getresponse()
                body = resp.read()
                slowest[0] = max(slowest[0], time.monotonic() - started)
                answers[0] += 1
                if resp.status != 200:
                    failures.append(f"{path}: {resp.status} {body[:150]!r}")
            except Exception as exc:  # a failed request is what the test is about
                failures.append(f"{path}: {exc!r}")
                conn.close()
                conn = proxy.connection(timeout=10)
        conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(3)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(at)
    fault()
    time.sleep(lasting)
    heal()
    time.sleep(max(0.0, t0 + seconds - time.monotonic()))
    stop.set()
    for t in threads:
        t.join(15)
    return answers[0], failures, slowest[0]


def pause(redis):
    def fault():
        # DEBUG SLEEP blocks Redis itself; it is sent from a thread so the test goes on.
        threading.Thread(target=lambda: redis.command("DEBUG", "SLEEP", "2", timeout=10),
                         daemon=True).start()
    return fault, lambda: None


def partition(redis):
    return (lambda: os.kill(redis.proc.pid, signal.SIGSTOP),
            lambda: os.kill(redis.proc.pid, signal.SIGCONT))


def errors(redis):
    def fault():
        redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis.command("CONFIG", "SET", "maxmemory", "1")

    def heal():
        redis.command("CONFIG", "SET", "maxmemory", "0")
    return fault, heal


@pytest.mark.parametrize("kind", ["pause", "partition", "errors"])
def test_requests_keep_succeeding_through_a_redis_fault(kind, mock, redis, start_proxy):
    proxy = start_proxy(mock.origin, env={"STPROXY_REDIS": redis.url,
                                          "STPROXY_REDIS_TIMEOUT": "300ms",
                                          **cache_env("1s,1s")})
    devices = mock.device_ids(TOKEN)
    paths = ["/devices", "/locations"] + [f"/devices/{d}/status" for d in devices[:3]]
    assert proxy.request("GET", "/devices", token=TOKEN).status == 200
    wait_for(lambda: redis.dbsize() > 0, timeout=3, what="entries in Redis before the fault")
    fault, heal = {"pause": pause, "partition": partition, "errors": errors}[kind](redis)
    answers, failures, slowest = load(proxy, paths, 5.0, fault, heal)
    assert answers > 30, f"the load ran ({answers} answers)"
    assert not failures, f"{len(failures)} requests failed during the {kind}: {failures[:3]}"
    # Redis waits are bounded by redis_timeout (and one reconnect), never by the fault.
    assert slowest < 2.0, f"the slowest answer took {slowest:.2f} s during the {kind}"
    status, doc = proxy.readyz()
    assert status == 200, "/readyz stays 200 whatever Redis does"
    # Redis is used again once it recovers: a new entry lands in it.
    redis.flushall()
    wait_for(lambda: proxy.request("GET", f"/devices/{devices[4]}", token=TOKEN).status == 200
             and redis.dbsize() > 0, timeout=8, what=f"entries in Redis again after the {kind}")
