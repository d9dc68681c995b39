"""The one gate every HTTP server of this project passes requests through: the engine's own
(`server.py`, `erl engine serve`) and the Tinker-compatible one (`erl_tinker/server.py`,
`erl engine serve --tinker`). Torch-free, so that a process without the engine's packages can use it.

Every request: its head within MAX_HEADER_BYTES and `header_deadline` seconds, then the credential
(checked by the caller's `authorized`, in constant time, before a single byte of body is read), and
only then the body (Content-Length required for POST, no chunked bodies, at most `max_body`). At most
`max_connections` connections are served at once: a new one takes the slot of the oldest that has not
sent an authorised request (see _BoundedHTTPServer), and gets 503 only when every slot holds one. What a route answers and how a refusal
is worded are the caller's: `resolve(method, path)` finds a route, `refuse(status, code, problem)`
words an error in the caller's API.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import Any, Callable

MAX_HTTP_BODY = 256 << 20  # an authenticated request's body; --max-body changes it
MAX_HEADER_BYTES = 32 << 10  # request line + headers, read before the credential is known
HEADER_DEADLINE_S = 30.0  # a connection must have sent its whole head within this (idle included)
SOCKET_TIMEOUT_S = 60.0  # any single read or write that makes no progress for this long ends it
MAX_CONNECTIONS = 32  # connections served at once; a new one cuts the oldest not yet authorised, else 503


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Request:
    method: str
    path: str  # without the query string
    headers: Message
    body: bytes


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[[Request], Reply]


class _HeadTooLarge(http.client.LineTooLong):
    """Raised when a request's head exceeds MAX_HEADER_BYTES (http.server answers 431)."""

    def __init__(self) -> None:
        super().__init__(f"request head larger than {MAX_HEADER_BYTES} bytes")


class _CappedReader:
    """The connection's input while a request head is read: reading past `limit` bytes raises.
    `lift()` is called once the request is authorised (its body may then be read in full)."""

    def __init__(self, inner: Any, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.count = 0
        self.armed = True

    def arm(self) -> None:
        self.count = 0
        self.armed = True

    def lift(self) -> None:
        self.armed = False

    def _budget(self, size: int) -> int:
        left = self.limit - self.count
        if left <= 0:
            raise _HeadTooLarge()
        return left + 1 if size is None or size < 0 else min(size, left + 1)

    def readline(self, size: int = -1) -> bytes:
        if not self.armed:
            return self.inner.readline(size)
        line = self.inner.readline(self._budget(size))
        self.count += len(line)
        if self.count > self.limit:
            raise _HeadTooLarge()
        return line

    def read(self, size: int = -1) -> bytes:
        if not self.armed:
            return self.inner.read(size)
        data = self.inner.read(self._budget(size))
        self.count += len(data)
        if self.count > self.limit:
            raise _HeadTooLarge()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` served at once.

    A connection that has not yet sent an authorised request head (a new one, or a keep-alive one
    idle between requests) is "waiting". When every slot is taken, a new connection takes the slot
    of the oldest waiting one that has never sent an authorised request (else of the oldest idle
    keep-alive one), which is cut: slow or idle connections without a token cannot starve a client
    that sends its request at once, however often they reconnect, and they go before the clients'
    own keep-alive connections. (A client's brand-new connection is cut too if that many newer ones
    arrive before the server has read its head: under a flood of reconnects on a busy machine, a few
    requests fail that way; see docs/reliability.md#load-test.) Only when every slot holds an
    authorised request is a new connection answered 503 and closed. Cut connections may take a moment
    to leave, so at most 2 x `max_connections` threads exist at any time. A request on a cut
    connection was never read, so it was never executed."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of connects is queued, not dropped

    def __init__(self, address: tuple[str, int], handler: Any, max_connections: int) -> None:
        self._max = max_connections
        self._lock = threading.Lock()
        self._live = 0  # connections holding a slot
        self._running = 0  # connection threads running (cut ones included until they leave)
        # socket -> (has sent an authorised request, when it began waiting), for waiting connections
        self._waiting: dict[Any, tuple[bool, float]] = {}
        self._trusted: set[Any] = set()  # connections that have sent an authorised request
        self._cut: set[Any] = set()  # connections cut to free their slot, until their thread leaves
        self.cut_count = 0
        super().__init__(address, handler)

    def waiting(self, sock: Any, yes: bool) -> None:
        """Marks a connection as waiting for a request head (True) or serving an authorised request."""
        with self._lock:
            if not yes:
                self._waiting.pop(sock, None)
                self._trusted.add(sock)
            elif sock not in self._cut:
                self._waiting[sock] = (sock in self._trusted, time.monotonic())

    def _admit(self, request: Any) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._live >= self._max and self._waiting and self._running < 2 * self._max:
                victim = min(self._waiting, key=self._waiting.__getitem__)
                del self._waiting[victim]
                self._cut.add(victim)
                self._live -= 1
                self.cut_count += 1
                try:
                    victim.shutdown(socket.SHUT_RDWR)  # its blocked read returns; the thread leaves
                except OSError:
                    pass
            if self._live >= self._max or self._running >= 2 * self._max:
                return False
            self._live += 1
            self._running += 1
            self._waiting[request] = (False, now)
            return True

    def _leave(self, request: Any) -> None:
        with self._lock:
            self._running -= 1
            self._waiting.pop(request, None)
            self._trusted.discard(request)
            if request in self._cut:
                self._cut.discard(request)
            else:
                self._live -= 1

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._admit(request):
            try:
                request.settimeout(1.0)
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._leave(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._leave(request)


def make_gated_server(
    host: str,
    port: int,
    *,
    authorized: Callable[[Message], bool],
    resolve: Callable[[str, str], Route | None],
    refuse: Callable[[int, str, str], Reply],
    max_body: int = MAX_HTTP_BODY,
    max_connections: int = MAX_CONNECTIONS,
    header_deadline: float = HEADER_DEADLINE_S,
) -> HTTPServer:
    """A bound, not yet serving, HTTP server whose every request passes the gate described above."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = SOCKET_TIMEOUT_S

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def setup(self) -> None:
            super().setup()
            self.rfile = _CappedReader(self.rfile, MAX_HEADER_BYTES)  # type: ignore[assignment]

        def handle_one_request(self) -> None:
            # The head (and the idle wait before it) must arrive within the deadline, else the
            # connection is shut; the timer is stopped once the request is authorised.
            self.rfile.arm()  # type: ignore[attr-defined]
            self.server.waiting(self.connection, True)  # type: ignore[attr-defined]
            self._deadline = threading.Timer(header_deadline, self._abort)
            self._deadline.daemon = True
            self._deadline.start()
            try:
                super().handle_one_request()
            except _HeadTooLarge:
                self.close_connection = True
                try:
                    self.send_error(431, "request head too large")
                except OSError:
                    pass
            except OSError:
                self.close_connection = True
            finally:
                self._deadline.cancel()

        def _abort(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _send(self, reply: Reply) -> None:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for k, v in reply.headers.items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(reply.body)

        def _refuse(self, status: int, code: str, problem: str) -> None:
            # The body (if any) is left unread, so the connection cannot be reused.
            self.close_connection = True
            self._send(refuse(status, code, problem))

        def _dispatch(self, method: str) -> None:
            if not authorized(self.headers):
                self._refuse(401, "unauthorized", "missing or wrong credential")
                return
            self._deadline.cancel()
            self.server.waiting(self.connection, False)  # type: ignore[attr-defined]
            self.rfile.lift()  # type: ignore[attr-defined]
            path = self.path.split("?", 1)[0]
            route = resolve(method, path)
            if route is None:
                self._refuse(404, "bad_request", f"no such endpoint: {method} {path}")
                return
            body = b""
            if method == "POST":
                if self.headers.get("Transfer-Encoding"):
                    self._refuse(411, "bad_request", "chunked bodies are not accepted; send Content-Length")
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 < length <= max_body:
                    if length > 0:
                        self._refuse(413, "bad_request", f"request body over {max_body} bytes")
                    else:
                        self._refuse(400, "bad_request", "a request body (with Content-Length) is required")
                    return
                body = self.rfile.read(length)
                if len(body) < length:
                    self.close_connection = True
                    return  # the client went away mid-body
            self._send(route(Request(method, path, self.headers, body)))

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._dispatch("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._dispatch("DELETE")

    return _BoundedHTTPServer((host, port), Handler, max_connections)
