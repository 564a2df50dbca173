"""Starts the real processes the integration tests talk to.

Everything listens on free loopback ports: the project's mock SmartThings API
(bench/stmock) over TLS with certificates from a CA made at test time, the
real stproxy binary, and (for later suites) a real redis-server. Nothing of
ours is stubbed: a test that passes here passed through the same code a user
runs.
"""
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse

TOP_SRCDIR = os.environ.get(
    "top_srcdir", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
TOP_BUILDDIR = os.environ.get("top_builddir", TOP_SRCDIR)
STPROXY = os.path.join(TOP_BUILDDIR, "stproxy")
STMOCK = os.path.join(TOP_BUILDDIR, "bench", "stmock")
REDIS_SERVER = os.environ.get("REDIS_SERVER", "/usr/bin/redis-server")


def free_port():
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def sha256_hex(text):
    """The credential id the proxy uses for a token: SHA-256, lower-case hex."""
    return hashlib.sha256(text.encode()).hexdigest()


# Path classes with a cache policy, as in STPROXY_CACHE_<CLASS>.
CACHE_CLASSES = ("DEVICES", "DEVICE", "DEVICE_STATUS", "COMPONENT_STATUS", "CAPABILITY_STATUS",
                 "DEVICE_HEALTH", "LOCATIONS", "ROOMS", "MODES", "SCENES", "CAPABILITIES",
                 "PRESENTATION")


def cache_env(default=None, **policies):
    """Environment for cache policies: cache_env("1s,1s", LOCATIONS="5s,5s")
    gives every class the default (if any) and the named classes their own
    "FRESH,STALE" value."""
    env = {}
    for cls in CACHE_CLASSES:
        value = policies.pop(cls, default)
        if value is not None:
            env[f"STPROXY_CACHE_{cls}"] = value
    if policies:
        raise ValueError(f"unknown cache classes: {sorted(policies)}")
    return env


def sleep_until(deadline):
    """Sleeps until time.monotonic() reaches deadline (at once if it has)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def run_openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Pki:
    """A throwaway CA and server certificates, made with the openssl CLI."""

    def __init__(self, directory):
        self.dir = directory
        self.ca = self._ca("ca", "stproxy test CA")
        self.other_ca = self._ca("other-ca", "an unrelated CA")
        # valid for the name and the address the tests use
        self.server_cert, self.server_key = self._leaf(
            "server", "localhost", "DNS:localhost,IP:127.0.0.1")
        # valid only for another name: host-name verification must refuse it
        self.wrong_name_cert, self.wrong_name_key = self._leaf(
            "wrongname", "not-the-upstream.example", "DNS:not-the-upstream.example")

    def _ca(self, name, subject):
        key, crt = f"{name}.key", f"{name}.pem"
        run_openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN={subject}",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)
        return os.path.join(self.dir, crt)

    def _leaf(self, name, cn, san):
        key, csr, crt, ext = f"{name}.key", f"{name}.csr", f"{name}.pem", f"{name}.ext"
        with open(os.path.join(self.dir, ext), "w") as f:
            f.write(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n"
                    "basicConstraints=CA:FALSE\n")
        run_openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", csr, "-subj", f"/CN={cn}", cwd=self.dir)
        run_openssl("x509", "-req", "-in", csr, "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext, cwd=self.dir)
        return os.path.join(self.dir, crt), os.path.join(self.dir, key)


class Process:
    """A child process whose stderr goes to a file the test can read."""

    def __init__(self, argv, env=None, name="process"):
        self.name = name
        self.log_path = tempfile.mktemp(prefix=f"{name}-", suffix=".log")
        self.log = open(self.log_path, "wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("STPROXY_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE,
                                     stderr=self.log, stdin=subprocess.DEVNULL)

    def output(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class Mock(Process):
    """bench/stmock: the SmartThings API double, over TLS."""

    def __init__(self, pki, devices=5, tokens=None, latency_ms=0, cert=None, key=None,
                 extra=()):
        argv = [STMOCK, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                "--cert", cert or pki.server_cert, "--key", key or pki.server_key,
                "--devices", str(devices), "--latency-ms", str(latency_ms), *extra]
        if tokens:
            argv += ["--tokens", ",".join(tokens)]
        super().__init__(argv, name="stmock")
        self.ca = pki.ca
        line = self.proc.stdout.readline().decode()
        if not line.startswith("stmock ready"):
            raise RuntimeError(f"stmock did not start: {line!r} {self.output()}")
        fields = dict(kv.split("=", 1) for kv in line.split()[2:])
        self.api_port = int(fields["api"].rsplit(":", 1)[1])
        self.admin_port = int(fields["admin"].rsplit(":", 1)[1])

    @property
    def origin(self):
        return f"https://localhost:{self.api_port}"

    def admin(self, method, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, json.loads(body) if body else None

    def counters(self):
        return self.admin("GET", "/counters")[1]

    def reset(self):
        self.admin("POST", "/reset")

    def last_request(self):
        return self.admin("GET", "/last-request")[1]

    def set_latency(self, ms):
        self.admin("POST", f"/config?latency_ms={ms}")

    def config(self):
        return self.admin("GET", "/config")[1]

    def fail(self, mode, status=None, count=None, path=None):
        """Injects a fault: mode is none|status|reset|hang|garbage|truncate|huge|
        nonjson (README.md, the mock); status is the
        answer of mode "status" (default 503); count limits the fault to the next
        N requests (then the mock goes back to none by itself); path limits it to
        paths starting with that prefix. Every key is sent, so nothing is left
        over from an earlier fault. Setting a mode answers requests held by an
        earlier hang with a 503."""
        params = {"fail_mode": mode,
                  "fail_status": 503 if status is None else status,
                  "fail_count": 0 if count is None else count,
                  "fail_path": path or ""}
        code, body = self.admin("POST", "/config?" + urllib.parse.urlencode(params))
        if code != 200:
            raise RuntimeError(f"stmock refused fault {params}: {body}")
        return body

    def clear_faults(self):
        return self.fail("none")

    def configure(self, **params):
        """POST /config with params as given, e.g. the rate limits:
        configure(rate_limit=30, rate_window_ms=2000). Raises if the mock
        refuses any key; returns the whole config after the change."""
        code, body = self.admin("POST", "/config?" + urllib.parse.urlencode(params))
        if code != 200:
            raise RuntimeError(f"stmock refused config {params}: {body}")
        return body

    def arrivals(self, token):
        """The arrival times of token's API requests since start or the last
        reset, as (milliseconds, limited) pairs in order; limited is True for
        the ones the mock's limits (or inject_429) answered 429."""
        doc = self.admin("GET", "/arrivals")[1]
        return [(ms, bool(limited)) for ms, limited in doc.get(token, [])]

    def api_connection(self, timeout=10):
        """A keep-alive HTTPS connection straight to the mock API (no proxy),
        trusting the test CA."""
        context = ssl.create_default_context(cafile=self.ca)
        return http.client.HTTPSConnection("localhost", self.api_port, timeout=timeout,
                                           context=context)

    def api_request(self, method, path, token, body=None, headers=None, conn=None):
        """One request straight to the mock API, on conn if given (kept open)
        or on a connection of its own. Returns a Response."""
        own = conn is None
        conn = conn or self.api_connection()
        hdrs = dict(headers or {})
        hdrs["Authorization"] = f"Bearer {token}"
        started = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return Response(resp, resp.read(), time.monotonic() - started)
        finally:
            if own:
                conn.close()

    def device_ids(self, token):
        """The ids of token's devices, asked of the mock directly (so no proxy
        budget is spent); the request is counted like any other."""
        resp = self.api_request("GET", "/devices", token)
        assert resp.status == 200, resp.body
        return [d["deviceId"] for d in resp.json()["items"]]

    def calls(self, path, method="GET"):
        """How many requests for path (no query) reached the mock since the last reset."""
        return self.counters()["by_path"].get(f"{method} {path}", 0)

    def held(self):
        """How many requests fail_mode=hang holds right now."""
        return self.counters()["held"]


class Response:
    def __init__(self, resp, body, elapsed=None):
        self.status = resp.status
        self.headers = resp.headers
        self.body = body
        self.elapsed = elapsed  # seconds from sending the request to the whole answer

    @property
    def cache(self):
        """The X-Cache header, or None."""
        return self.headers.get("X-Cache")

    def json(self):
        return json.loads(self.body)


class Proxy(Process):
    """The real stproxy binary with settings from the environment."""

    def __init__(self, upstream, env=None, config_text=None):
        self.port = free_port()
        self.admin_port = free_port()
        full = {"STPROXY_LISTEN": f"127.0.0.1:{self.port}",
                "STPROXY_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
                "STPROXY_UPSTREAM": upstream}
        full.update(env or {})
        # STPROXY_TEST_WRAPPER runs the proxy under a tool, e.g.
        # "valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite"
        argv = os.environ.get("STPROXY_TEST_WRAPPER", "").split() + [STPROXY]
        if config_text is not None:
            self.config_path = tempfile.mktemp(prefix="stproxy-", suffix=".conf")
            with open(self.config_path, "w") as f:
                f.write(config_text)
            argv += ["-c", self.config_path]
        super().__init__(argv, env=full, name="stproxy")
        wait_for(self._healthy, what="stproxy /healthz")

    def _healthy(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"stproxy exited with {self.proc.returncode}: {self.output()}")
        try:
            return self.admin("/healthz")[0] == 200
        except OSError:
            return False

    def connection(self, timeout=15):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, headers=None, body=None, token=None, timeout=15):
        conn = self.connection(timeout)
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        conn.connect()
        started = time.monotonic()
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        result = Response(resp, resp.read(), time.monotonic() - started)
        conn.close()
        return result

    def admin(self, path, method="GET"):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        return resp.status, body

    def purge(self, **params):
        """POST /purge on the admin port; params become the query (device=,
        credential=, client=). Returns (status, parsed JSON or the raw text)."""
        path = "/purge"
        if params:
            path += "?" + urllib.parse.urlencode(params)
        status, body = self.admin(path, method="POST")
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def readyz(self):
        """(status, parsed JSON or the raw text) of GET /readyz."""
        status, body = self.admin("/readyz")
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def kill(self):
        """SIGKILL, as a crash would; the fixture then does not expect exit 0."""
        self.killed = True
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def metric(self, name):
        """Sum of a metric's samples whose name (with labels) starts with name."""
        total = 0.0
        for line in self.admin("/metrics")[1].splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == name or key.startswith(name + "{"):
                total += float(value)
        return total


class RespError(Exception):
    """An error reply (-ERR ...) from Redis."""


class RedisClient:
    """A minimal RESP2 client over one socket, enough for tests to look into
    the proxy's Redis: keys, values, DBSIZE, FLUSHALL, DEBUG SLEEP."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def close(self):
        self.reader.close()
        self.sock.close()

    def command(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _line(self):
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        return line[:-2]

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.reader.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise ConnectionError(f"unexpected RESP line {line!r}")


class Redis:
    """A real redis-server on a free loopback port, without persistence. kill()
    and start() again keep the port, so a proxy configured with url can
    reconnect to the same address."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="stproxy-redis-")
        self.log_path = os.path.join(self.dir, "redis.log")
        self.proc = None
        self.start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout=10):
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("redis-server is already running")
        argv = [REDIS_SERVER, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
                "--port", str(self.port), "--daemonize", "no", "--dir", self.dir,
                "--logfile", self.log_path, "--enable-debug-command", "local"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        wait_for(self._answers, timeout=timeout, what=f"redis-server PING on {self.port}")
        return self

    def _answers(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                               f"{self.output()[-2000:]}")
        try:
            return self.command("PING") == "PONG"
        except (OSError, ConnectionError, RespError):
            return False

    def output(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL: the proxy sees its connection drop with no goodbye."""
        if self.running():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def stop(self):
        if self.running():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- a tiny client: one connection per call, so a killed server cannot
    # leave a test holding a dead socket ----

    def command(self, *args, timeout=10):
        client = RedisClient(self.port, timeout=timeout)
        try:
            return client.command(*args)
        finally:
            client.close()

    def keys(self, pattern="*"):
        return sorted(k.decode("utf-8", "replace") for k in self.command("KEYS", pattern))

    def get(self, key):
        return self.command("GET", key)

    def dbsize(self):
        return self.command("DBSIZE")

    def flushall(self):
        return self.command("FLUSHALL")

    def debug_sleep(self, seconds):
        """Makes Redis unresponsive for that long (blocks this call too)."""
        return self.command("DEBUG", "SLEEP", seconds, timeout=seconds + 10)

    def dump(self, key):
        """A key's value as bytes, whatever its type (for searching it)."""
        kind = self.command("TYPE", key)
        if kind == "string":
            parts = [self.command("GET", key) or b""]
        elif kind == "hash":
            parts = self.command("HGETALL", key)
        elif kind == "list":
            parts = self.command("LRANGE", key, 0, -1)
        elif kind == "set":
            parts = self.command("SMEMBERS", key)
        elif kind == "zset":
            parts = self.command("ZRANGE", key, 0, -1)
        elif kind == "stream":
            parts = [repr(self.command("XRANGE", key, "-", "+")).encode()]
        else:
            parts = []
        return b"\n".join(p for p in parts if isinstance(p, bytes))


def concurrent_requests(proxies, path, n, token=None, headers=None, method="GET", timeout=15):
    """Sends n identical requests at once, each on its own connection from its
    own thread, spread round-robin over proxies (one Proxy or a list). All
    connections are open before any request is sent. Returns n results in
    order: a Response (with .elapsed, measured from the send) or the exception
    the request raised."""
    if isinstance(proxies, Proxy):
        proxies = [proxies]
    barrier = threading.Barrier(n)
    results = [None] * n
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"

    def worker(i):
        proxy = proxies[i % len(proxies)]
        conn = proxy.connection(timeout)
        try:
            try:
                conn.connect()
            finally:
                barrier.wait(timeout=timeout)
            started = time.monotonic()
            conn.request(method, path, headers=hdrs)
            resp = conn.getresponse()
            results[i] = Response(resp, resp.read(), time.monotonic() - started)
        except Exception as exc:  # reported to the test, which says what failed
            results[i] = exc
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return results
