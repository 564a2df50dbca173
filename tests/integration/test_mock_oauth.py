"""The mock API's OAuth2 side, tested on its own: the authorize page, the
token endpoint (both grants, rotation, invalid_grant, client
authentication), access tokens on the API, the admin endpoints and the
counters. The proxy's OAuth2 tests (test_oauth.py) rely on all of this."""
import base64
import json
import socket
import ssl
import struct
import subprocess
import time
import urllib.parse

from harness import STMOCK

CLIENT_ID = "mock-app-1"
CLIENT_SECRET = "mock-secret-1"
OTHER_ID = "mock-app-2"
OTHER_SECRET = "mock-secret-2"
REDIRECT = "http://127.0.0.1:8765/callback"


def start(start_mock, **kwargs):
    return start_mock(extra=["--oauth-client", f"{CLIENT_ID}:{CLIENT_SECRET}",
                             "--oauth-client", f"{OTHER_ID}:{OTHER_SECRET}"], **kwargs)


def basic(client_id=CLIENT_ID, secret=CLIENT_SECRET):
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def token_request(mock, form, auth=None, path="/oauth/token",
                  content_type="application/x-www-form-urlencoded"):
    """POSTs form (a dict) to the mock's token endpoint; (status, JSON)."""
    conn = mock.api_connection()
    headers = {"Content-Type": content_type, "Authorization": auth or basic()}
    conn.request("POST", path, body=urllib.parse.urlencode(form), headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, json.loads(body)


def refresh(mock, refresh_token, **kwargs):
    return token_request(mock, {"grant_type": "refresh_token",
                                "refresh_token": refresh_token}, **kwargs)


def issue(mock, client_id=CLIENT_ID):
    status, doc = mock.admin("POST", f"/oauth/issue?client_id={client_id}")
    assert status == 200, doc
    return doc["refresh_token"]


def authorize(mock, path="/v1/oauth/authorize", **params):
    query = {"client_id": CLIENT_ID, "response_type": "code", "redirect_uri": REDIRECT,
             "scope": "r:devices:* x:devices:*", "state": "st-123"}
    query.update(params)
    conn = mock.api_connection()
    conn.request("GET", path + "?" + urllib.parse.urlencode(query))
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, resp.headers.get("Location"), body


def test_refresh_rotates_and_reuse_is_invalid_grant(start_mock):
    mock = start(start_mock)
    first = issue(mock)
    status, doc = refresh(mock, first)
    assert status == 200, doc
    assert set(doc) == {"access_token", "token_type", "refresh_token", "expires_in", "scope",
                        "installed_app_id", "access_tier"}
    assert doc["token_type"] == "bearer" and doc["access_tier"] == 0
    assert doc["expires_in"] == 3600, "default access lifetime is one hour"
    assert doc["refresh_token"] != first
    # the used token is dead at once
    status, err = refresh(mock, first)
    assert (status, err) == (400, {"error": "invalid_grant",
                                   "error_description": "Invalid refresh token"})
    # the new one works, once; client_id may be in the body too
    status, doc2 = token_request(mock, {"grant_type": "refresh_token", "client_id": CLIENT_ID,
                                        "refresh_token": doc["refresh_token"]})
    assert status == 200, doc2
    oauth = mock.counters()["oauth"]
    assert oauth["refreshes"] == 2 and oauth["invalid_grant"] == 1
    assert oauth["token_requests"] == 3
    assert oauth["refreshes_by_token"] == {first: 2, doc["refresh_token"]: 1}
    # /reset clears the OAuth counters, not the tokens
    mock.reset()
    assert mock.counters()["oauth"]["refreshes_by_token"] == {}
    assert refresh(mock, doc2["refresh_token"])[0] == 200


def test_client_authentication(start_mock):
    mock = start(start_mock)
    rt = issue(mock)
    for auth in (basic(secret="wrong"), basic(client_id="nobody"), "Bearer x", "Basic !!!!"):
        status, err = refresh(mock, rt, auth=auth)
        assert status == 401 and err["error"] == "invalid_client", (auth, err)
    # another app cannot use this app's refresh token
    status, err = refresh(mock, rt, auth=basic(OTHER_ID, OTHER_SECRET))
    assert status == 400 and err["error"] == "invalid_grant"
    # a client_id in the body must be the authenticated one
    status, err = token_request(mock, {"grant_type": "refresh_token", "refresh_token": rt,
                                       "client_id": OTHER_ID})
    assert status == 401 and err["error"] == "invalid_client"
    status, err = refresh(mock, rt, content_type="application/json")
    assert status == 400 and err["error"] == "invalid_request"
    status, err = token_request(mock, {"grant_type": "password"})
    assert status == 400 and err["error"] == "unsupported_grant_type"
    # none of that used the token up
    assert refresh(mock, rt)[0] == 200


def test_authorize_and_code_exchange(start_mock):
    mock = start(start_mock)
    status, location, _ = authorize(mock, redirect_uri=REDIRECT + "?keep=1")
    assert status == 302, "authorize stands in for the user approving: a redirect"
    parts = urllib.parse.urlsplit(location)
    assert location.startswith(REDIRECT + "?keep=1&code=")
    query = urllib.parse.parse_qs(parts.query)
    assert query["state"] == ["st-123"] and query["keep"] == ["1"]
    code = query["code"][0]
    # the redirect_uri must be the one the code was issued for
    status, err = token_request(mock, {"grant_type": "authorization_code", "code": code,
                                       "redirect_uri": REDIRECT})
    assert (status, err["error"]) == (400, "invalid_grant")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT + "?keep=1"}
    status, doc = token_request(mock, form, path="/v1/oauth/token")
    assert status == 200, doc
    assert doc["scope"] == "r:devices:* x:devices:*"
    # single use
    status, err = token_request(mock, form)
    assert (status, err["error"]) == (400, "invalid_grant")
    oauth = mock.counters()["oauth"]
    assert oauth["code_exchanges"] == 1 and oauth["authorizations"] == 1
    assert oauth["invalid_grant"] == 2
    # the tokens it gave work
    assert mock.api_request("GET", "/devices", doc["access_token"]).status == 200
    assert refresh(mock, doc["refresh_token"])[0] == 200
    # the unversioned path works as well; an unknown app gets an error page
    assert authorize(mock, path="/oauth/authorize")[0] == 302
    status, location, body = authorize(mock, client_id="nobody")
    assert status == 400 and location is None and b"client_id" in body
    assert authorize(mock, response_type="token")[0] == 400


def test_access_tokens_on_the_api(start_mock):
    mock = start(start_mock, tokens=["static-token"])
    a = refresh(mock, issue(mock))[1]
    b = refresh(mock, a["refresh_token"])[1]
    other = refresh(mock, issue(mock, OTHER_ID), auth=basic(OTHER_ID, OTHER_SECRET))[1]
    # an app's tokens all see one world, whatever --tokens says
    ids_a = mock.device_ids(a["access_token"])
    assert mock.device_ids(b["access_token"]) == ids_a
    assert set(mock.device_ids(other["access_token"])).isdisjoint(ids_a)
    # a command through one token is seen through the next
    resp = mock.api_request("POST", f"/devices/{ids_a[0]}/commands", a["access_token"],
                            body=json.dumps({"commands": [{"component": "main",
                                                           "capability": "switch",
                                                           "command": "on"}]}))
    assert resp.status == 200, resp.body
    status = mock.api_request("GET", f"/devices/{ids_a[0]}/status", b["access_token"]).json()
    assert status["components"]["main"]["switch"]["switch"]["value"] == "on"
    by_token = mock.counters()["by_token"]
    assert set(by_token) == {f"oauth:{CLIENT_ID}", f"oauth:{OTHER_ID}"}, \
        "access tokens are counted under oauth:<client_id>, never as themselves"
    # expire: access tokens die, refresh tokens live
    assert mock.admin("POST", "/oauth/expire") == (200, {"expired": 3})
    resp = mock.api_request("GET", "/devices", b["access_token"])
    assert resp.status == 401 and resp.json()["error"]["code"] == "UnauthorizedError"
    c = refresh(mock, b["refresh_token"])[1]
    assert mock.api_request("GET", "/devices", c["access_token"]).status == 200
    assert mock.counters()["by_status"]["401"] == 1


def test_short_lifetime_expires_by_itself(start_mock):
    mock = start(start_mock)
    mock.configure(access_ttl_ms=700)
    doc = refresh(mock, issue(mock))[1]
    assert doc["expires_in"] == 1, "expires_in is the lifetime in seconds, rounded up"
    assert mock.api_request("GET", "/locations", doc["access_token"]).status == 200
    time.sleep(0.8)
    assert mock.api_request("GET", "/locations", doc["access_token"]).status == 401


def test_revoke(start_mock):
    mock = start(start_mock)
    one, two = issue(mock), issue(mock)
    live = refresh(mock, issue(mock))[1]
    assert mock.admin("POST", f"/oauth/revoke?refresh_token={one}") == (200, {"revoked": 1})
    assert refresh(mock, one)[1]["error"] == "invalid_grant"
    assert mock.admin("POST", "/oauth/revoke?refresh_token=nope")[0] == 404
    assert mock.api_request("GET", "/devices", live["access_token"]).status == 200
    status, doc = mock.admin("POST", "/oauth/revoke")
    assert status == 200 and doc["revoked"] == 3  # two, live's refresh and access tokens
    assert refresh(mock, two)[1]["error"] == "invalid_grant"
    assert mock.api_request("GET", "/devices", live["access_token"]).status == 401
    states = {t["token"]: t["state"] for t in mock.admin("GET", "/oauth/tokens")[1]["refresh_tokens"]}
    assert states[one] == "revoked" and states[two] == "revoked"


def test_token_fail_and_latency(start_mock):
    mock = start(start_mock)
    rt = issue(mock)
    mock.configure(token_fail=2)
    for _ in range(2):
        status, err = refresh(mock, rt)
        assert status == 503 and err["error"] == "temporarily_unavailable"
    assert mock.counters()["oauth"]["refreshes_by_token"] == {}, \
        "a request refused by token_fail never looked at its token"
    mock.configure(token_latency_ms=300)
    started = time.monotonic()
    status, doc = refresh(mock, rt)
    assert status == 200 and time.monotonic() - started >= 0.29
    oauth = mock.counters()["oauth"]
    assert oauth["failed"] == 2 and oauth["token_requests"] == 3


def test_token_request_dropped_when_the_client_leaves_during_the_latency(start_mock, pki):
    mock = start(start_mock)
    rt = issue(mock)
    mock.configure(token_latency_ms=400)
    body = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": rt}).encode()
    raw = (b"POST /oauth/token HTTP/1.1\r\nHost: localhost\r\n"
           b"Content-Type: application/x-www-form-urlencoded\r\n"
           b"Authorization: " + basic().encode() + b"\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body) + body)
    context = ssl.create_default_context(cafile=pki.ca)
    for hard in (False, True):  # a close, and a kill -9 (RST)
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", mock.api_port)),
                                   server_hostname="localhost")
        sock.sendall(raw)
        time.sleep(0.1)
        if hard:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    time.sleep(0.6)
    oauth = mock.counters()["oauth"]
    assert oauth["abandoned"] == 2 and oauth["refreshes"] == 0, oauth
    # so the token was never rotated behind the gone client's back
    assert refresh(mock, rt)[0] == 200


def test_config_keys_and_errors(start_mock):
    mock = start(start_mock)
    config = mock.config()
    assert config["access_ttl_ms"] == 3600000
    assert config["token_latency_ms"] == 0 and config["token_fail"] == 0
    assert mock.admin("POST", "/config?access_ttl_ms=0")[0] == 400
    assert mock.admin("POST", "/oauth/issue?client_id=nobody")[0] == 400
    conn = mock.api_connection()
    conn.request("GET", "/oauth/token")
    resp = conn.getresponse()
    assert resp.status == 405 and json.loads(resp.read())["error"] == "invalid_request"
    conn.close()
    counters = mock.counters()
    assert counters["by_path"] == {"GET /oauth/token": 1}
    assert counters["by_token"] == {} and counters["by_status"] == {}, \
        "the OAuth endpoints are not API requests: no by_token, no by_status"


def test_bad_oauth_client_option(pki):
    for spec in ("no-colon", ":secret", "id:", None):
        extra = ["--oauth-client", spec] if spec else ["--oauth-client", "a:b",
                                                       "--oauth-client", "a:c"]
        proc = subprocess.run([STMOCK, "--listen", "127.0.0.1:0", "--admin-listen",
                               "127.0.0.1:0", "--cert", pki.server_cert, "--key",
                               pki.server_key, *extra], capture_output=True, timeout=10)
        assert proc.returncode == 2, (spec, proc.stderr)
        assert b"oauth-client" in proc.stderr
