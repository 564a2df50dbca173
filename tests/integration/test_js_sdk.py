"""The official @smartthings/core-sdk as a real client: listing a
multi-page device collection, reading status, sending a command, through the
proxy in pass-through and in shared mode."""
import json
import os
import shutil
import subprocess

import pytest

from harness import TOP_SRCDIR

JS_DIR = os.path.join(TOP_SRCDIR, "tests", "js")


@pytest.fixture(scope="module")
def sdk_dir(tmp_path_factory):
    """The SDK installed with npm into a test-local folder."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are required (Debian packages nodejs, npm)")
    work = tmp_path_factory.mktemp("js")
    for name in ("package.json", "sdk_check.js"):
        shutil.copy(os.path.join(JS_DIR, name), work / name)
    cached = os.path.join(JS_DIR, "node_modules")
    if os.path.isdir(os.path.join(cached, "@smartthings", "core-sdk")):
        shutil.copytree(cached, work / "node_modules", symlinks=True)
    else:
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=work, check=True, timeout=300)
    return work


def run_sdk(sdk_dir, base_url, token):
    out = subprocess.run(["node", "sdk_check.js", base_url, token], cwd=sdk_dir,
                         capture_output=True, text=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, result
    return result


def check_result(result, devices):
    assert result["deviceCount"] == devices, "every page was followed"
    assert len(set(result["deviceIds"])) == devices
    assert result["device"] == result["deviceIds"][0]
    assert result["health"] == "ONLINE"
    assert result["capabilityStatus"] == result["statusBefore"]
    assert result["commandStatus"] in ("ACCEPTED", "COMPLETED")
    assert result["statusAfter"] == result["wanted"], "the command's effect is visible"
    assert result["locations"] >= 1


def test_sdk_pass_through(start_mock, start_proxy, sdk_dir):
    mock = start_mock(devices=450)  # 3 pages of the API's default 200
    proxy = start_proxy(mock.origin)
    result = run_sdk(sdk_dir, f"http://127.0.0.1:{proxy.port}", "sdk-user-token")
    check_result(result, 450)
    by_path = mock.counters()["by_path"]
    assert by_path["GET /devices"] == 3, by_path


def test_sdk_shared_mode(start_mock, start_proxy, sdk_dir):
    mock = start_mock(devices=250, tokens=["the-shared-pat"])
    proxy = start_proxy(mock.origin, env={"STPROXY_TOKEN": "the-shared-pat",
                                          "STPROXY_CLIENT_KEYS": "sdk:sdk-client-key-1"})
    # 127.0.0.1, not localhost: Node 18 tries ::1 first and the proxy listens on IPv4
    result = run_sdk(sdk_dir, f"http://127.0.0.1:{proxy.port}", "sdk-client-key-1")
    check_result(result, 250)
    assert mock.counters()["by_token"].keys() == {"the-shared-pat"}


def test_sdk_sees_401_for_unknown_key(start_mock, start_proxy, sdk_dir):
    mock = start_mock(tokens=["the-shared-pat"])
    proxy = start_proxy(mock.origin, env={"STPROXY_TOKEN": "the-shared-pat",
                                          "STPROXY_CLIENT_KEYS": "sdk:sdk-client-key-1"})
    out = subprocess.run(["node", "sdk_check.js", f"http://127.0.0.1:{proxy.port}", "wrong"],
                         cwd=sdk_dir, capture_output=True, text=True, timeout=60)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 1
    assert result["status"] == 401
    assert result["body"]["error"]["code"] == "UnauthorizedError"
