"""No token or key in anything the proxy writes: its log (at debug), /metrics, /readyz, the
error bodies it makes, and Redis's keys and values. Two exceptions are by design and checked
to be the only ones: a cached answer's body is the upstream's (the proxy does not edit it),
and the rotated OAuth2 refresh token is stored in Redis under stp1:o:* (and the state
directory), because it must survive a restart."""
import json

from harness import sha256_hex
from test_oauth import CLIENT_SECRET, KEY as KEY_OAUTH, issue, oauth_env, start_oauth_mock

TOKEN = "pat-secret-upstream-6f1d2c9a8b"       # the shared static token
KEY = "client-key-secret-0c7e5a1f93"           # a client key
WRONG_KEY = "client-key-guess-55aa9d0e31"      # a key someone tried
PASS_TOKEN = "pat-secret-passthrough-b4e8d2"   # a pass-through client's token
COMMAND = json.dumps({"commands": [{"component": "main", "capability": "switch",
                                    "command": "on"}]}).encode()


def redis_dump(redis):
    """Every key with its value (hashes as their fields and values), as text."""
    out = {}
    for key in redis.command("KEYS", "*"):
        name = key.decode()
        kind = redis.command("TYPE", name)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            out[name] = redis.command("GET", name).decode("utf-8", "replace")
        elif kind == "hash":
            out[name] = " ".join(v.decode("utf-8", "replace")
                                 for v in redis.command("HGETALL", name))
        elif kind == "set":
            out[name] = " ".join(v.decode() for v in redis.command("SMEMBERS", name))
        else:
            out[name] = kind
    return out


def exercise(proxy, device, key):
    """Successes, refusals and errors: what might carry a secret into a log or a body."""
    bodies = []
    for k in (key, WRONG_KEY, None):
        bodies.append(proxy.request("GET", "/devices", token=k).body)
    bodies.append(proxy.request("GET", f"/devices/{device}/status", token=key).body)
    bodies.append(proxy.request("POST", f"/devices/{device}/commands", token=key,
                                body=COMMAND, headers={"Content-Type": "application/json"}).body)
    bodies.append(proxy.request("GET", "/devices/../apps", token=key).body)
    bodies.append(proxy.request("GET", "/devices/nowhere/status", token=key).body)
    return bodies


def assert_clean(what, text, secrets):
    for secret in secrets:
        assert secret not in text, f"{what} holds a secret ({secret[:8]}...)"


def test_shared_and_pass_through_secrets_stay_out(start_mock, start_proxy, redis):
    mock = start_mock(tokens=[TOKEN, PASS_TOKEN])
    device = mock.device_ids(TOKEN)[0]
    shared = start_proxy(mock.origin, env={"STPROXY_TOKEN": TOKEN,
                                           "STPROXY_CLIENT_KEYS": f"homeassistant:{KEY}",
                                           "STPROXY_REDIS": redis.url,
                                           "STPROXY_LOG_LEVEL": "debug"})
    passing = start_proxy(mock.origin, env={"STPROXY_REDIS": redis.url,
                                            "STPROXY_LOG_LEVEL": "debug"})
    bodies = exercise(shared, device, KEY) + exercise(passing, device, PASS_TOKEN)
    secrets = [TOKEN, KEY, WRONG_KEY, PASS_TOKEN]
    for proxy in (shared, passing):
        assert_clean("the log", proxy.output(), secrets)
        assert_clean("/metrics", proxy.admin("/metrics")[1], secrets)
        assert_clean("/readyz", str(proxy.admin("/readyz")[1]), secrets)
    for body in bodies:
        assert_clean("an answer's body", body.decode("utf-8", "replace"), secrets)
    dump = redis_dump(redis)
    assert any(k.startswith("stp1:e:") for k in dump), "answers were cached in Redis"
    assert any(sha256_hex(TOKEN) in k for k in dump), "keys name credentials by hash"
    assert_clean("a Redis key", " ".join(dump), secrets)
    for key, value in dump.items():
        assert_clean(f"Redis value {key}", value, secrets)


def test_oauth_secrets_stay_out_but_for_the_stored_refresh_token(start_mock, start_proxy,
                                                                 redis, tmp_path):
    mock = start_oauth_mock(start_mock)
    refresh = issue(mock)
    proxy = start_proxy(mock.origin, env=oauth_env(mock, tmp_path, refresh,
                                                   STPROXY_REDIS=redis.url,
                                                   STPROXY_LOG_LEVEL="debug"))
    assert proxy.request("GET", "/devices", token=KEY_OAUTH).status == 200
    tokens = mock.admin("GET", "/oauth/tokens")[1]
    issued = [g["token"] for kind in ("refresh_tokens", "access_tokens") for g in tokens[kind]]
    assert len(issued) >= 3, "a refresh rotated the refresh token and issued an access token"
    secrets = [CLIENT_SECRET, KEY_OAUTH] + issued
    assert_clean("the log", proxy.output(), secrets)
    assert_clean("/metrics", proxy.admin("/metrics")[1], secrets)
    dump = redis_dump(redis)
    assert_clean("a Redis key", " ".join(dump), secrets)
    stored = [k for k in dump if k.startswith("stp1:o:")]
    assert stored, "the rotated refresh token is kept in Redis"
    for name, value in dump.items():
        if name in stored:
            assert_clean(f"Redis value {name}", value, [CLIENT_SECRET, KEY_OAUTH])
        else:
            assert_clean(f"Redis value {name}", value, secrets)
