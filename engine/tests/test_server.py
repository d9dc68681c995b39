"""The transports: stdio framing and HTTP (bearer token, loopback only, version check) end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from conftest import ENGINE_DIR, FIXTURE

from erl_engine import PROTOCOL_VERSION
from erl_engine.server import main, make_http_server


@pytest.fixture(scope="module")
def http_server() -> Any:
    server = make_http_server("127.0.0.1", 0, "s3cret")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def post(url: str, body: Any, token: str | None = "s3cret") -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/v1/call", data=data, method="POST")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_requires_the_bearer_token(http_server: str) -> None:
    hello = {"v": PROTOCOL_VERSION, "id": 1, "method": "hello", "params": {"protocolVersion": PROTOCOL_VERSION}}
    assert post(http_server, hello, token=None)[0] == 401
    status, body = post(http_server, hello, token="wrong")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = post(http_server, hello)
    assert status == 200 and body["ok"] and body["result"]["protocolVersion"] == PROTOCOL_VERSION


def test_http_serves_the_protocol_and_checks_versions(http_server: str) -> None:
    load = {"path": FIXTURE, "dtype": "float32", "device": "cpu", "seed": 0}
    status, body = post(http_server, {"v": PROTOCOL_VERSION, "id": 2, "method": "loadModel", "params": load})
    assert body["ok"], body
    _, body = post(http_server, {"v": PROTOCOL_VERSION, "id": 3, "method": "encode", "params": {"text": "ab"}})
    assert body == {"v": PROTOCOL_VERSION, "id": 3, "ok": True, "result": {"ids": [74, 75]}}
    _, body = post(http_server, {"v": PROTOCOL_VERSION + 1, "id": 4, "method": "info", "params": {}})
    assert body["error"]["code"] == "protocol_version" and "speaks version" in body["error"]["message"]
    _, body = post(http_server, b"{not json")
    assert body["error"]["code"] == "bad_request"
    _, body = post(http_server, {"v": PROTOCOL_VERSION, "id": 5, "method": "shutdown", "params": {}})
    assert not body["ok"] and "not available over HTTP" in body["error"]["message"]


def test_http_refuses_non_loopback_and_needs_a_token(capsys: Any, monkeypatch: Any) -> None:
    assert main(["--http", "--host", "0.0.0.0", "--port", "0", "--token", "x"]) == 2
    assert "refusing to listen on non-loopback" in capsys.readouterr().err
    monkeypatch.delenv("ERL_ENGINE_TOKEN", raising=False)
    assert main(["--http", "--port", "0"]) == 2
    assert "a bearer token is required" in capsys.readouterr().err


def test_stdio_answers_in_order_and_survives_bad_lines() -> None:
    lines = [
        {"v": PROTOCOL_VERSION, "id": 1, "method": "hello", "params": {"protocolVersion": PROTOCOL_VERSION}},
        "garbage",
        {"v": PROTOCOL_VERSION, "id": 2, "method": "nope", "params": {}},
        {"v": PROTOCOL_VERSION, "id": 3, "method": "info", "params": {}},
        {"v": PROTOCOL_VERSION, "id": 4, "method": "shutdown", "params": {}},
        {"v": PROTOCOL_VERSION, "id": 5, "method": "info", "params": {}},
    ]
    stdin = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    env = {**os.environ, "PYTHONPATH": ENGINE_DIR}
    r = subprocess.run([sys.executable, "-c", "import builtins; print('noise'); from erl_engine.server import main; main()"],
                       input=stdin, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [o.get("id") for o in out] == [1, None, 2, 3, 4]  # nothing after shutdown
    assert out[1]["error"]["code"] == "bad_request" and out[2]["error"]["code"] == "unknown_method"
    assert "ready (stdio" in r.stderr
