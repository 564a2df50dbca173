"""Starts the real processes the integration tests talk to.

Everything listens on free loopback ports: the project's mock SmartThings API
(bench/stmock) over TLS with certificates from a CA made at test time, the
real stproxy binary, and (for later suites) a real redis-server. Nothing of
ours is stubbed: a test that passes here passed through the same code a user
runs.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

TOP_SRCDIR = os.environ.get(
    "top_srcdir", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
TOP_BUILDDIR = os.environ.get("top_builddir", TOP_SRCDIR)
STPROXY = os.path.join(TOP_BUILDDIR, "stproxy")
STMOCK = os.path.join(TOP_BUILDDIR, "bench", "stmock")


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


class Response:
    def __init__(self, resp, body):
        self.status = resp.status
        self.headers = resp.headers
        self.body = body

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
        argv = [STPROXY]
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
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        result = Response(resp, resp.read())
        conn.close()
        return result

    def admin(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        return resp.status, body

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
