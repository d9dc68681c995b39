"""The HTTP transport's limits: the token is checked before any body is read, request heads and bodies
are capped, stalled heads time out, connections are bounded, and a port in use is a clear error."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Iterator

import pytest

from erl_engine import PROTOCOL_VERSION
from erl_engine.server import MAX_HEADER_BYTES, Dispatcher, main, make_http_server

TOKEN = "t0ken"


@pytest.fixture(scope="module")
def dispatcher() -> Dispatcher:
    return Dispatcher()


def start(dispatcher: Dispatcher, **kw: Any) -> tuple[Any, int]:
    server = make_http_server("127.0.0.1", 0, TOKEN, dispatcher=dispatcher, **kw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture()
def served(dispatcher: Dispatcher) -> Iterator[int]:
    server, port = start(dispatcher, max_body=4096, max_connections=3, header_deadline=1.0)
    yield port
    server.shutdown()
    server.server_close()


def raw(port: int, data: bytes, timeout: float = 20.0) -> bytes:
    """Sends `data` on a fresh connection and returns everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def head(path: str, length: int | None, token: str | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def response(s: socket.socket) -> bytes:
    """One whole response from a kept-alive connection: the head, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(4096)
    return head + b"\r\n\r\n" + body


def test_a_request_without_the_token_is_refused_before_its_body_is_read(served: int) -> None:
    # It claims 400 MB and sends none of it: the answer comes at once, from the head alone.
    answer = raw(served, head("/v1/call", 400 << 20, None))
    assert status_of(answer) == 401 and b"unauthorized" in answer
    assert b"Connection: close" in answer
    answer = raw(served, head("/v1/call", 400 << 20, "wrong"))
    assert status_of(answer) == 401
    # Unknown routes give nothing away without the token either.
    assert status_of(raw(served, head("/nope", 10, None))) == 401


def test_an_authorised_body_over_the_cap_is_refused_unread(served: int) -> None:
    answer = raw(served, head("/v1/call", 4097, TOKEN))
    assert status_of(answer) == 413 and b"over 4096 bytes" in answer
    assert status_of(raw(served, head("/v1/call", None, TOKEN))) == 400
    body = json.dumps({"v": PROTOCOL_VERSION, "id": 1, "method": "hello", "params": {"protocolVersion": PROTOCOL_VERSION}})
    answer = raw(served, head("/v1/call", len(body), TOKEN).replace(b"Host: x", b"Host: x\r\nConnection: close") + body.encode())
    assert status_of(answer) == 200 and b'"ok":true' in answer


def test_an_oversized_head_is_refused(served: int) -> None:
    big = b"X-Pad: " + b"a" * 8000 + b"\r\n"
    answer = raw(served, b"POST /v1/call HTTP/1.1\r\n" + big * (MAX_HEADER_BYTES // 8000 + 2) + b"\r\n")
    assert status_of(answer) == 431


def test_a_stalled_head_is_cut_off(served: int) -> None:
    # Half a head, then silence: the server closes the connection after its deadline (1 s here) rather
    # than holding a thread for ever. The client's own timeout (20 s) is far longer.
    t0 = time.monotonic()
    answer = raw(served, b"POST /v1/call HTTP/1.1\r\nHost: x\r\n")
    assert answer == b"" and time.monotonic() - t0 < 20


def test_a_new_connection_takes_the_slot_of_the_oldest_one_without_a_request(served: int) -> None:
    # Three connections (the limit here) that send nothing: a fourth, a real client, is served, and the
    # oldest silent one is cut to make room; they cannot starve the real client, however many they are.
    held = [socket.create_connection(("127.0.0.1", served), timeout=20) for _ in range(3)]
    try:
        time.sleep(0.2)  # let the server accept them (it does not answer until a head arrives)
        answer = raw(served, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\nConnection: close\r\n\r\n")
        assert status_of(answer) == 200
        assert held[0].recv(10) == b""  # the oldest was cut
    finally:
        for s in held:
            s.close()


def test_a_clients_idle_keep_alive_connection_goes_after_the_silent_ones(dispatcher: Dispatcher) -> None:
    # The client's own keep-alive connection (idle after one request) is older than two silent ones,
    # yet a new connection cuts a silent one: the client's connection still serves its next request.
    # (A 4 s head deadline here, so that the idle client is not cut by it.)
    server, served = start(dispatcher, max_body=4096, max_connections=3, header_deadline=4.0)
    client = socket.create_connection(("127.0.0.1", served), timeout=20)
    health = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
    silent: list[socket.socket] = []
    try:
        client.sendall(health)
        assert status_of(response(client)) == 200
        silent = [socket.create_connection(("127.0.0.1", served), timeout=20) for _ in range(2)]
        time.sleep(0.2)
        answer = raw(served, health.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert status_of(answer) == 200
        assert silent[0].recv(10) == b""  # the oldest silent one was cut
        client.sendall(health)
        assert status_of(response(client)) == 200
    finally:
        for s in [client, *silent]:
            s.close()
        server.shutdown()
        server.server_close()


def test_connections_beyond_the_limit_are_turned_away_when_each_holds_a_request(served: int) -> None:
    # Three authorised requests whose bodies are still arriving hold every slot: a fourth gets 503.
    held = [socket.create_connection(("127.0.0.1", served), timeout=20) for _ in range(3)]
    try:
        for s in held:
            s.sendall(head("/v1/call", 10, TOKEN) + b"{")
        time.sleep(0.3)
        answer = raw(served, head("/v1/call", 10, TOKEN))
        assert status_of(answer) == 503
    finally:
        for s in held:
            s.close()


def test_a_port_in_use_is_a_clear_error(capsys: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["--http", "--port", str(port), "--token", "x"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_no_more_than_40961_bytes_are_read_before_the_token_is_checked(
    dispatcher: Dispatcher, monkeypatch: Any
) -> None:
    # The figure docs/reliability.md states: a 32 KiB head, one byte to see it is over, one 8 KiB
    # read-ahead buffer. Every byte the server takes from a socket passes SocketIO.readinto (the
    # clients here use raw sockets, so only the server's reads are counted).
    read = [0]
    real = socket.SocketIO.readinto

    def counting(self: socket.SocketIO, b: Any) -> int | None:
        n = real(self, b)
        read[0] += n or 0
        return n

    monkeypatch.setattr(socket.SocketIO, "readinto", counting)
    server, port = start(dispatcher)
    try:

        def send(data: bytes) -> bytes:
            read[0] = 0
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                sender = threading.Thread(target=lambda: _send_quietly(s, data), daemon=True)
                sender.start()
                answer = s.recv(65536)
                sender.join(20)
            time.sleep(0.2)  # let the handler finish with the connection
            return answer

        # No token, a 400 MB body announced and 4 MB of it sent (8,192 bytes are read: one buffer).
        answer = send(head("/v1/call", 400 << 20, None) + b"a" * (4 << 20))
        assert status_of(answer) == 401 and 0 < read[0] <= 40_961, read[0]
        # No token, 1 MB of headers (40,960 bytes are read).
        answer = send(b"POST /v1/call HTTP/1.1\r\n" + b"X-Pad: " + b"a" * (1 << 20) + b"\r\n\r\n")
        assert status_of(answer) == 431 and 0 < read[0] <= 40_961, read[0]
    finally:
        server.shutdown()
        server.server_close()


def _send_quietly(s: socket.socket, data: bytes) -> None:
    try:
        s.sendall(data)
    except OSError:
        pass  # the server closed the connection without reading the rest: that is the point
