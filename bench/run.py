"""bench/run.py: stproxy's benchmark harness (bench/run installs, builds, then runs this).

Owns the benchmark scenarios and their report. It starts, on free loopback ports and in one
temporary directory, the mock SmartThings API (bench/stmock over TLS with a throwaway CA), a
redis-server, and the systems under test: stproxy with its embedded store, stproxy with Redis,
and nginx with proxy_cache (bench/nginx.conf.in). bench/stbench makes the load. Process
management is the integration tests' (tests/integration/harness.py): Pki, Mock, Proxy, Redis
and Process are used as they are.

Scenarios: 1 cache-hit throughput and latency, 2 coalescing of 1000 identical misses,
3 the integration mix direct and through stproxy under the SmartThings limits, 4 stproxy's
memory with 10,000 entries and 1,000 idle connections. Each prints its figures as it goes;
at the end comes one side-by-side table, and --json FILE gets every raw result.

    bench/run [--quick] [--json FILE] [--latency-ms N]
"""
import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
import harness  # noqa: E402  (needs the path above)

STBENCH = os.path.join(harness.TOP_BUILDDIR, "bench", "stbench")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_TEMPLATE = os.path.join(TOP, "bench", "nginx.conf.in")
SAMPLE_CONF = os.path.join(TOP, "conf", "stproxy.conf")

QUICK_SCALE = 6  # --quick runs the mix with every time constant divided by this
HIGH_BUDGETS = {"STPROXY_BUDGET": "1000000/1s", "STPROXY_DEVICE_BUDGET": "1000000/1s"}
MEMORY_TARGET_MIB = 64


class ScenarioError(Exception):
    """A scenario could not produce its figures."""


# ---- helpers ------------------------------------------------------------------------------

def say(text=""):
    print(text, flush=True)


def get(port, path, token):
    """One GET on a connection of its own, with the Accept stbench sends (Accept is part of
    the cache key in stproxy and nginx alike): (status, X-Cache)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}",
                                           "Accept": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.headers.get("X-Cache")
    finally:
        conn.close()


def proc_status_kib(pid):
    """VmRSS and VmHWM of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def duration_ms(text):
    """A duration as the sample configuration writes it (500ms, 5s, 2m, bare seconds)."""
    match = re.fullmatch(r"(\d+)(ms|s|m|)", text)
    if not match:
        raise ValueError(f"unexpected duration {text!r} in {SAMPLE_CONF}")
    return int(match.group(1)) * {"ms": 1, "s": 1000, "m": 60000, "": 1000}[match.group(2)]


def scaled_cache_env(divisor):
    """Every cache_* default of conf/stproxy.conf with its windows divided by divisor, as
    STPROXY_CACHE_* variables (durations in ms)."""
    env = {}
    with open(SAMPLE_CONF) as f:
        for line in f:
            match = re.match(r"#\s*(cache_\w+)\s*=\s*(\S+)\s*$", line)
            if not match or match.group(1) == "cache_max_bytes":
                continue
            windows = [f"{round(duration_ms(d) / divisor)}ms" for d in match.group(2).split(",")]
            env["STPROXY_" + match.group(1).upper()] = ",".join(windows)
    return env


def count_of(tally, key):
    return (tally or {}).get(key, 0)


def tally_text(tally):
    return " ".join(f"{k}={v}" for k, v in sorted((tally or {}).items())) or "-"


def max_age(result):
    """The largest Age stbench saw, None when no answer had one (stbench says -1)."""
    age = result.get("age_max_s", -1)
    return None if age < 0 else age


def ratio(a, b):
    return a / b if a and b else None


class StBench:
    """One bench/stbench run in the background; result() waits and parses its JSON."""

    def __init__(self, args, timeout):
        self.argv = [STBENCH, *map(str, args)]
        self.timeout = timeout
        say("  $ " + " ".join(os.path.relpath(a, TOP) if a.startswith(TOP) else a
                              for a in self.argv))
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)

    def result(self):
        try:
            out, err = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ScenarioError(f"stbench did not finish within {self.timeout} s")
        if self.proc.returncode != 0:
            raise ScenarioError(f"stbench exited with {self.proc.returncode}: {err.strip()}")
        try:
            return json.loads(out)
        except ValueError:
            raise ScenarioError(f"stbench printed no JSON: {out.strip()[:300]} {err.strip()}")

    def kill(self):
        """Ends the run if it is still going (a failure or an interruption elsewhere)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def stbench(args, timeout):
    """One stbench run in the foreground: its JSON."""
    bench = StBench(args, timeout)
    try:
        return bench.result()
    finally:
        bench.kill()


def latency_text(result):
    lat = result.get("latency_ms", {})
    return (f"p50 {lat.get('p50', 0):.2f}  p99 {lat.get('p99', 0):.2f}  "
            f"p99.9 {lat.get('p99.9', 0):.2f}  max {lat.get('max', 0):.2f} ms")


# ---- nginx --------------------------------------------------------------------------------

class Nginx(harness.Process):
    """nginx with proxy_cache in front of the mock, one worker, in the foreground, with
    everything it writes under prefix."""

    def __init__(self, prefix, mock, fresh):
        self.port = harness.free_port()
        self.prefix = prefix
        os.makedirs(prefix)
        values = {"PREFIX": prefix, "PORT": str(self.port), "MOCK_PORT": str(mock.api_port),
                  "CA": mock.ca, "FRESH": fresh,
                  "USER_LINE": "user root;" if os.geteuid() == 0 else ""}
        with open(NGINX_TEMPLATE) as f:
            text = re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], f.read())
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(text)
        super().__init__([NGINX, "-p", prefix, "-e", os.path.join(prefix, "error.log"),
                          "-c", conf, "-g", "daemon off;"], name="nginx")
        harness.wait_for(self._listening, what="nginx listening")

    def output(self):
        with open(os.path.join(self.prefix, "error.log"), errors="replace") as f:
            return super().output() + f.read()

    def _listening(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.output()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False


# ---- the run ------------------------------------------------------------------------------

class Run:
    """What the scenarios share: options, the temporary directory, the CA, the mock of
    scenarios 1-3, and every process started (stopped in reverse order by stack)."""

    def __init__(self, options, workdir, stack):
        self.quick = options.quick
        self.latency_ms = options.latency_ms
        self.workdir = workdir
        self.processes = []
        os.makedirs(os.path.join(workdir, "pki"))
        self.pki = harness.Pki(os.path.join(workdir, "pki"))
        self.mock = self.keep(harness.Mock(self.pki, devices=50, latency_ms=self.latency_ms),
                              stack)

    def keep(self, process, stack):
        """Registers process to be stopped when stack closes; until then, a failing
        scenario reports it if it has exited."""
        self.processes.append(process)
        stack.callback(self._stop, process)
        return process

    def _stop(self, process):
        self.processes.remove(process)
        process.stop()

    def proxy(self, stack, env, mock=None):
        """stproxy in pass-through mode in front of mock (default: the shared one). Its
        log level is warn: at info it writes one access line per request, and nginx here
        keeps no access log either."""
        mock = mock or self.mock
        full = {"STPROXY_UPSTREAM_CA": mock.ca, "STPROXY_LOG_LEVEL": "warn",
                "STPROXY_STATE_DIR": os.path.join(self.workdir, "state")}
        full.update(env)
        return self.keep(harness.Proxy(mock.origin, full), stack)

    def exited_processes(self):
        """The last lines of every process that exited before it was stopped."""
        lines = []
        for process in self.processes:
            proc = getattr(process, "proc", None)
            if proc is not None and proc.poll() is not None:
                tail = process.output().strip().splitlines()[-15:]
                lines.append(f"  {getattr(process, 'name', 'redis-server')} exited with "
                             f"{proc.returncode}:")
                lines += [f"    {line}" for line in tail]
        return lines


# ---- scenario 1: cache hits ---------------------------------------------------------------

def scenario_hits(run, systems):
    """Warm one entry per path in each system, then closed-loop GETs of it: all hits."""
    token = "bench-hits"
    device = run.mock.device_ids(token)[0]
    seconds = 4 if run.quick else 10
    groups = {}
    for group, path in (("GET /devices/{id}/status", f"/devices/{device}/status"),
                        ("GET /devices", "/devices")):
        say(f"\n[1] cache hits, {group}: 50 connections, {seconds} s per system")
        results = {}
        for name, system in systems:
            status, warm_cache = get(system.port, path, token)
            if status != 200:
                raise ScenarioError(f"{name}: warm-up GET {path} answered {status}")
            result = stbench(["-c", 50, "-d", seconds, "-t", token, "--json",
                              f"http://127.0.0.1:{system.port}{path}"], timeout=seconds + 60)
            result["warm_up_x_cache"] = warm_cache
            results[name] = result
            say(f"  {name:17} {result['rps']:9.0f} req/s  {latency_text(result)}  "
                f"X-Cache {tally_text(result.get('x_cache'))}  errors {result.get('errors', 0)}")
            misses = result.get("requests", 0) - count_of(result.get("x_cache"), "HIT")
            if misses:
                say(f"  !! {name}: {misses} answers were not HIT")
        groups[group] = results
    return {"seconds": seconds, "connections": 50, "groups": groups}


# ---- scenario 2: coalescing ---------------------------------------------------------------

def scenario_coalescing(run, systems):
    """1000 clients at once on one path nobody has cached: how many upstream calls, and how
    long the waiters wait compared with the mock's latency."""
    token = "bench-coalesce"
    ids = run.mock.device_ids(token)
    say(f"\n[2] coalescing: 1000 identical concurrent misses, mock latency {run.latency_ms} ms")
    results = {}
    for (name, system), device in zip(systems, ids):
        path = f"/devices/{device}/status"
        run.mock.reset()
        result = stbench(["--once", "-c", 1000, "-d", 30, "-t", token, "--json",
                          f"http://127.0.0.1:{system.port}{path}"], timeout=90)
        counters = run.mock.counters()
        result["upstream_calls"] = counters["by_path"].get(f"GET {path}", 0)
        result["upstream_total"] = counters["total"]
        results[name] = result
        say(f"  {name:17} upstream calls {result['upstream_calls']}  waiters "
            f"{latency_text(result)}  status {tally_text(result.get('status'))}  "
            f"X-Cache {tally_text(result.get('x_cache'))}")
    return {"clients": 1000, "mock_latency_ms": run.latency_ms, "systems": results}


# ---- scenario 3: the integration mix ------------------------------------------------------

def scenario_mix(run):
    """20 integrations polling 50 devices, straight to the mock and through stproxy at the
    same time, each with its own token, under the SmartThings limits. --quick divides every
    time constant (limits' windows, budgets, cache policies, intervals) by QUICK_SCALE."""
    scale = QUICK_SCALE if run.quick else 1
    window_ms = 60000 // scale
    seconds = 180 // scale
    interval = "0.83-5" if run.quick else "5-30"
    env = {}
    # queue_timeout stays 5 s: it answers to clients' 10 s timeouts, which do not scale.
    if run.quick:
        env = {"STPROXY_BUDGET": "250/10s", "STPROXY_DEVICE_BUDGET": "12/10s",
               **scaled_cache_env(scale)}
    say(f"\n[3] integration mix: 20 integrations, 50 devices, interval {interval} s, "
        f"{seconds} s; mock limits 250 and 12/device per {window_ms} ms; direct and proxied "
        "at once")
    with contextlib.ExitStack() as stack:
        proxy = run.proxy(stack, env)
        run.mock.configure(rate_limit=250, rate_window_ms=window_ms, device_limit=12,
                           device_window_ms=window_ms)
        run.mock.reset()
        common = ["--mix", "--integrations", 20, "--devices", 50, "--interval", interval,
                  "-d", seconds, "--mock-admin", f"http://127.0.0.1:{run.mock.admin_port}",
                  "--json"]
        sides = {
            "direct": ("bench-mix-direct",
                       ["--cacert", run.mock.ca, f"https://127.0.0.1:{run.mock.api_port}/"]),
            "stproxy": ("bench-mix-proxied", [f"http://127.0.0.1:{proxy.port}/"]),
        }
        benches = {side: StBench([*common, "-t", token, *target], timeout=seconds + 60)
                   for side, (token, target) in sides.items()}
        for bench in benches.values():
            stack.callback(bench.kill)
        results = {side: bench.result() for side, bench in benches.items()}
        counters = run.mock.counters()
    for side, (token, _) in sides.items():
        result = results[side]
        result["mock_by_token"] = counters["by_token"].get(token, 0)
        result["mock_rate_limited"] = counters.get("rate_limited_by_token", {}).get(token, 0)
        upstream = result.get("upstream", {})
        say(f"  {side:8} client requests {result.get('requests', 0)}  upstream calls "
            f"{upstream.get('calls', '-')} (mock: {result['mock_by_token']})  upstream 429s "
            f"{upstream.get('rate_limited', '-')} (mock: {result['mock_rate_limited']})  status "
            f"{tally_text(result.get('status'))}  X-Cache {tally_text(result.get('x_cache'))}  "
            f"max Age {'-' if max_age(result) is None else max_age(result)} s")
    return {"seconds": seconds, "interval": interval, "window_ms": window_ms,
            "proxy_env": env, "sides": results}


# ---- scenario 4: memory -------------------------------------------------------------------

def reset_peak_rss(pid):
    """Sets a process's VmHWM back to its VmRSS (Linux 4.0 and later). False when the
    kernel does not allow it; VmHWM then stays the peak since start."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def scenario_memory(run):
    """stproxy's (embedded store) peak RSS holding 10,000 entries with 1,000 idle clients.
    A mock of its own: 10,000 devices per token, no latency. The fill's own peak is reported
    apart: stbench --fill lists every device in one /devices answer, which the proxy holds
    several times over while it passes it on."""
    token = "bench-memory"
    idle_seconds = 6 if run.quick else 15
    say("\n[4] memory: stproxy embedded, 10,000 cached entries, 1,000 idle connections")
    with contextlib.ExitStack() as stack:
        mock = run.keep(harness.Mock(run.pki, devices=10000, latency_ms=0), stack)
        proxy = run.proxy(stack, {**HIGH_BUDGETS, "STPROXY_UPSTREAM_CONNECTIONS": "64",
                                  "STPROXY_MAX_CONNECTIONS": "4096",
                                  **harness.cache_env(DEVICE_STATUS="600s,600s",
                                                      DEVICES="600s,600s")}, mock=mock)
        pid = proxy.proc.pid
        at_start = proc_status_kib(pid)
        fill = stbench(["--fill", "-c", 64, "-d", 60, "-t", token, "--json",
                        f"http://127.0.0.1:{proxy.port}/"], timeout=120)
        # The gauge is refreshed on stproxy's janitor tick, not on every store.
        with contextlib.suppress(TimeoutError):
            harness.wait_for(lambda: proxy.metric("stproxy_cache_entries") >= 10000,
                             timeout=5, what="10000 cache entries")
        entries = int(proxy.metric("stproxy_cache_entries"))
        after_fill = proc_status_kib(pid)
        say(f"  filled: {fill.get('requests', 0)} requests in {fill.get('seconds', 0):.1f} s, "
            f"status {tally_text(fill.get('status'))}; stproxy_cache_entries {entries}; "
            f"RSS {after_fill['VmRSS'] / 1024:.1f} MiB, peak so far "
            f"{after_fill['VmHWM'] / 1024:.1f} MiB")
        if entries < 10000:
            raise ScenarioError(f"only {entries} entries cached after the fill "
                                f"(stproxy_cache_bytes {proxy.metric('stproxy_cache_bytes'):.0f})")
        peak_reset = reset_peak_rss(pid)
        device = mock.device_ids(token)[0]
        idle = StBench(["--idle", "-c", 1000, "-d", idle_seconds, "-t", token, "--json",
                        f"http://127.0.0.1:{proxy.port}/devices/{device}/status"],
                       timeout=idle_seconds + 30)
        stack.callback(idle.kill)
        harness.wait_for(lambda: proxy.metric("stproxy_client_connections") >= 1000,
                         timeout=idle_seconds, what="1000 client connections on stproxy")
        loaded = proc_status_kib(pid)
        connections = int(proxy.metric("stproxy_client_connections"))
        idle_result = idle.result()
    say(f"  with {entries} entries and {connections} connections: RSS "
        f"{loaded['VmRSS'] / 1024:.1f} MiB, peak {loaded['VmHWM'] / 1024:.1f} MiB "
        f"({'since the fill' if peak_reset else 'since start'}; target {MEMORY_TARGET_MIB} MiB)")
    return {"at_start_kib": at_start, "after_fill_kib": after_fill, "loaded_kib": loaded,
            "peak_reset_after_fill": peak_reset, "entries": entries,
            "client_connections": connections, "fill": fill, "idle": idle_result,
            "target_mib": MEMORY_TARGET_MIB}


# ---- the report ---------------------------------------------------------------------------

def machine_facts():
    def first_line(argv):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "not available"
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), cpu)
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "nginx": first_line([NGINX, "-v"]),
            "redis": first_line([harness.REDIS_SERVER, "--version"]),
            "stproxy": first_line([harness.STPROXY, "-V"]),
            "python": platform.python_version()}


def table(title, header, rows):
    """Prints one section: a title, then columns padded to their widest cell."""
    cells = [header] + [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    say(f"\n{title}")
    for n, row in enumerate(cells):
        say("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            say("  " + "  ".join("-" * w for w in widths))


def fmt(value, spec):
    return None if value is None else format(value, spec)


def report_hits(data):
    names = ("stproxy embedded", "stproxy redis", "nginx")
    for group, results in data["groups"].items():
        rows = []
        for label, pick, spec in (("hits/s", lambda r: r.get("rps"), ".0f"),
                                  ("p50 ms", lambda r: r["latency_ms"]["p50"], ".2f"),
                                  ("p99 ms", lambda r: r["latency_ms"]["p99"], ".2f"),
                                  ("p99.9 ms", lambda r: r["latency_ms"]["p99.9"], ".2f"),
                                  ("max ms", lambda r: r["latency_ms"]["max"], ".2f")):
            values = [pick(results[n]) for n in names]
            rows.append([label, *(fmt(v, spec) for v in values),
                         fmt(ratio(values[0], values[2]), ".2f"),
                         fmt(ratio(values[1], values[2]), ".2f")])
        rows.append(["answers not HIT",
                     *(results[n].get("requests", 0) - count_of(results[n].get("x_cache"), "HIT")
                       for n in names), None, None])
        table(f"1. cache hits, {group} ({data['connections']} connections, "
              f"{data['seconds']} s each)",
              ["", *names, "embedded/nginx", "redis/nginx"], rows)


def report_coalescing(data):
    names = list(data["systems"])
    results = [data["systems"][n] for n in names]
    rows = [["upstream calls", *(r["upstream_calls"] for r in results)],
            *[[f"waiters {p} ms", *(fmt(r["latency_ms"][p], ".1f") for r in results)]
              for p in ("p50", "p99", "max")],
            ["errors", *(r.get("errors", 0) for r in results)],
            ["mock latency ms", *([data["mock_latency_ms"]] * len(names))]]
    table(f"2. coalescing, {data['clients']} identical concurrent misses", ["", *names], rows)


def report_mix(data):
    direct, proxied = data["sides"]["direct"], data["sides"]["stproxy"]

    def upstream(result, key, mock_key):
        return result.get("upstream", {}).get(key, result[mock_key])

    calls = [upstream(direct, "calls", "mock_by_token"),
             upstream(proxied, "calls", "mock_by_token")]
    rows = [["client requests", direct.get("requests"), proxied.get("requests")],
            ["upstream calls", *calls],
            ["upstream 429s", upstream(direct, "rate_limited", "mock_rate_limited"),
             upstream(proxied, "rate_limited", "mock_rate_limited")],
            ["client statuses", tally_text(direct.get("status")),
             tally_text(proxied.get("status"))],
            ["X-Cache", tally_text(direct.get("x_cache")), tally_text(proxied.get("x_cache"))],
            ["max Age s", max_age(direct), max_age(proxied)],
            *[[f"latency {p} ms", fmt(direct["latency_ms"][p], ".1f"),
               fmt(proxied["latency_ms"][p], ".1f")] for p in ("p50", "p99", "max")],
            ["skipped polling cycles", direct.get("skipped_cycles"),
             proxied.get("skipped_cycles")],
            ["ratio direct/proxied upstream calls", fmt(ratio(*calls), ".2f"), None]]
    table(f"3. integration mix ({data['seconds']} s, interval {data['interval']} s, limit "
          f"windows {data['window_ms']} ms)", ["", "direct", "via stproxy"], rows)


def report_memory(data):
    target = data["target_mib"]

    def mib(kib, against_target=False):
        text = f"{kib / 1024:.1f}"
        return f"{text} (over {target})" if against_target and kib / 1024 > target else text

    since = "since the fill" if data["peak_reset_after_fill"] else "since start"
    rows = [["RSS idle, at start", mib(data["at_start_kib"]["VmRSS"])],
            ["peak RSS during the fill", mib(data["after_fill_kib"]["VmHWM"], True)],
            [f"RSS {data['entries']} entries + {data['client_connections']} idle conns",
             mib(data["loaded_kib"]["VmRSS"])],
            [f"peak RSS {data['entries']} entries + {data['client_connections']} idle conns "
             f"({since})", mib(data["loaded_kib"]["VmHWM"], True)],
            ["target", str(target)]]
    table("4. memory, stproxy embedded (MiB)", ["", "MiB"], rows)


# ---- main ---------------------------------------------------------------------------------

def parse_options():
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="short runs, and the mix with time scaled down by "
                             f"{QUICK_SCALE} (under 2 minutes)")
    parser.add_argument("--json", metavar="FILE", help="write every raw result to FILE")
    parser.add_argument("--latency-ms", type=int, default=50,
                        help="the mock's latency in scenarios 1-3 (default 50)")
    return parser.parse_args()


def main():
    options = parse_options()
    # Ctrl-C, SIGTERM and SIGHUP unwind: every process is stopped on the way out. SIGINT
    # too, explicitly: Python leaves it ignored when started in the background of a script.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    # A benchmark under STPROXY_TEST_WRAPPER (valgrind) would measure the wrapper.
    os.environ.pop("STPROXY_TEST_WRAPPER", None)
    started = time.monotonic()
    facts = machine_facts()
    say(f"machine: {facts['nproc']} CPUs ({facts['cpu']}), Linux {facts['kernel']}")
    say(f"         {facts['stproxy']}; {facts['nginx']}; {facts['redis']}")
    say("setup:   stproxy is one process on one event loop, so nginx runs worker_processes 1;")
    say("         stbench shares the machine's CPUs with the system under test.")
    say("         stproxy runs at log_level=warn (info writes an access line per request);")
    say("         nginx has access_log off.")
    say(f"mode:    {'quick' if options.quick else 'full'}")
    results = {"machine": facts, "quick": options.quick, "mock_latency_ms": options.latency_ms,
               "scenarios": {}, "failures": {}}
    workdir = tempfile.mkdtemp(prefix="stproxy-bench-")
    # harness.Process and harness.Redis put their logs and data under tempfile's directory.
    tempfile.tempdir = workdir
    try:
        with contextlib.ExitStack() as stack:
            run = Run(options, workdir, stack)

            def attempt(name, scenario, *args):
                try:
                    results["scenarios"][name] = scenario(run, *args)
                except Exception as exc:  # reported; the other scenarios still run
                    results["failures"][name] = f"{type(exc).__name__}: {exc}"
                    say(f"  !! {name} failed: {exc}")
                    for line in run.exited_processes():
                        say(line)

            with contextlib.ExitStack() as systems_stack:
                redis = run.keep(harness.Redis(), systems_stack)
                env = {**HIGH_BUDGETS, "STPROXY_MAX_CONNECTIONS": "4096",
                       **harness.cache_env(DEVICE_STATUS="600s,600s", DEVICES="600s,600s")}
                systems = [
                    ("stproxy embedded", run.proxy(systems_stack, env)),
                    ("stproxy redis",
                     run.proxy(systems_stack, {**env, "STPROXY_REDIS": redis.url})),
                    ("nginx", run.keep(Nginx(os.path.join(workdir, "nginx"), run.mock, "600s"),
                                       systems_stack)),
                ]
                attempt("hits", scenario_hits, systems)
                attempt("coalescing", scenario_coalescing, systems)
            attempt("mix", scenario_mix)
            attempt("memory", scenario_memory)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    say("\n" + "=" * 100)
    say(f"stproxy benchmark ({'quick' if options.quick else 'full'}), "
        f"{facts['nproc']} CPUs, mock latency {options.latency_ms} ms")
    reports = {"hits": report_hits, "coalescing": report_coalescing, "mix": report_mix,
               "memory": report_memory}
    for name, report in reports.items():
        if name in results["scenarios"]:
            report(results["scenarios"][name])
        else:
            say(f"\n{name}: FAILED: {results['failures'].get(name)}")
    results["seconds"] = round(time.monotonic() - started, 1)
    say(f"\ntotal {results['seconds']} s")
    if options.json:
        with open(options.json, "w") as f:
            json.dump(results, f, indent=2)
        say(f"raw results in {options.json}")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
