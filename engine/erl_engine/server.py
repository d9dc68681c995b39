"""The engine process: serves the protocol over stdio (default) or HTTP.

stdio: one JSON request per line on stdin, one JSON answer per line on stdout, in order. Nothing else
is ever written to stdout (the real stdout is kept private and fd 1 is pointed at stderr, so stray
prints from libraries cannot corrupt the stream). EOF on stdin or a `shutdown` request ends the process.

HTTP: `POST /v1/call` with a request envelope as the body, `GET /v1/health`; every request must carry
`Authorization: Bearer <token>`. It binds to loopback unless --allow-remote is given. Calls run one at
a time, as over stdio (a lock serialises them).

Usage:
  python -m erl_engine.server                       # stdio
  python -m erl_engine.server --http --port 8765    # token from ERL_ENGINE_TOKEN or --token
"""

from __future__ import annotations

import argparse
import hmac
import http.client
import ipaddress
import json
import os
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import Any, BinaryIO, Callable

from .protocol import ProtocolError, fail, ok, parse_request


def configure_threads() -> None:
    """CPU threads for torch: $ERL_ENGINE_THREADS, else 1 under the test suite ($ERL_TEST), else chosen
    by a short measurement at start (autotune.py). On a shared CPU, OpenMP threads that lose their core
    to other processes spin and wait for each other; one thread per engine is then several times faster
    than two, which the measurement sees."""
    from .autotune import configure_threads as configure

    configure()


class Dispatcher:
    def __init__(self) -> None:
        # Deferred: importing torch takes a second, and --help should not pay for it.
        from .engine import Engine

        configure_threads()
        self.engine = Engine()
        self.lock = threading.Lock()

    def handle_line(self, raw: bytes | str) -> tuple[dict[str, Any], bool]:
        """Answers one raw request; returns (answer, shutdown_requested)."""
        try:
            msg = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return fail(None, ProtocolError("bad_request", f"the request is not valid JSON: {e}")), False
        rid = msg.get("id") if isinstance(msg, dict) and isinstance(msg.get("id"), int) else None
        try:
            rid, method, params = parse_request(msg)
            if method == "shutdown":
                return ok(rid, {}), True
            with self.lock:
                return ok(rid, self.execute(method, params)), False
        except ProtocolError as e:
            return fail(rid, e), False
        except Exception as e:  # a bug or a torch error: report it, keep serving
            return fail(rid, _internal(e)), False

    def execute(self, method: str, params: dict[str, Any]) -> Any:
        """Runs a validated request; under torchrun on every rank, answering with any rank's error."""
        d = self.engine.dist
        if d is None:
            return self.engine.call(method, params)
        d.broadcast_request((method, params))
        result, err = _outcome(self.engine, method, params)
        outcomes = d.gather_outcomes(err) or []
        errors = [(r, e) for r, e in enumerate(outcomes) if e is not None and e[0] != "peer"]
        if errors:
            rank, (code, message) = errors[0]
            raise ProtocolError(code, message if rank == 0 else f"rank {rank}: {message}")
        if err is not None:  # only "another rank failed", yet none reported an error: should not happen
            raise ProtocolError("internal", "an engine rank failed without reporting an error")
        return result

    def close(self) -> None:
        """Under torchrun: tells the other ranks to exit."""
        d = self.engine.dist
        if d is not None and d.rank == 0:
            d.broadcast_request(("shutdown", {}))


def _internal(e: BaseException) -> ProtocolError:
    if isinstance(e, OSError) and e.filename and e.strerror:
        # A file the engine could not read or write (a full or read-only disk, permissions): not a bug.
        return ProtocolError("internal", f"{e.filename}: {e.strerror}")
    traceback.print_exc(file=sys.stderr)
    sys.stderr.flush()
    msg_text = f"{type(e).__name__}: {e}".splitlines()[0][:500] if str(e) else type(e).__name__
    # The answer says where, since over stdio the engine's stderr (with the whole traceback) is not shown.
    return ProtocolError(
        "internal",
        f"engine error ({msg_text}) raised at {_where(e)}; a bug or an unexpected torch error: "
        "please report it with this message",
    )


def _frame(f: traceback.FrameSummary) -> str:
    """`file:line in function`, the file shortened to its package path (erl_engine/…, torch/…)."""
    path = f.filename.replace(os.sep, "/")
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = "erl_engine/" + path.split("/erl_engine/", 1)[1] if "/erl_engine/" in path else os.path.basename(path)
    return f"{path}:{f.lineno} in {f.name}"


def _where(e: BaseException) -> str:
    """The innermost frame of an exception's traceback and, when that is outside the engine's own code
    (in torch, say), the innermost frame inside it too."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "an unknown place"
    inner = frames[-1]
    own = next((f for f in reversed(frames) if "/erl_engine/" in f.filename.replace(os.sep, "/")), None)
    if own is None or own is inner:
        return _frame(inner)
    return f"{_frame(inner)}, called from {_frame(own)}"


def _outcome(engine: Any, method: str, params: dict[str, Any]) -> tuple[Any, tuple[str, str] | None]:
    """(result, None) or (None, (code, message)); code "peer" when only another rank failed."""
    from .dist import PeerFailed

    try:
        return engine.call(method, params), None
    except PeerFailed:
        return None, ("peer", "")
    except ProtocolError as e:
        return None, (e.code, e.message)
    except Exception as e:  # noqa: BLE001 - reported through rank 0
        err = _internal(e)
        return None, (err.code, err.message)


def follow() -> int:
    """Ranks other than 0: execute what rank 0 broadcasts until it says shutdown."""
    os.dup2(2, 1)  # nothing of theirs may reach the protocol stream
    sys.stdout = sys.stderr
    dispatcher = Dispatcher()
    d = dispatcher.engine.dist
    assert d is not None
    while True:
        method, params = d.broadcast_request(None)
        if method == "shutdown":
            break
        _, err = _outcome(dispatcher.engine, method, params)
        d.gather_outcomes(err)
    _finish(d)
    return 0


def _finish(d: Any) -> None:
    """Under torchrun: all ranks meet, tear the process groups down, and leave at once.

    The meeting keeps a rank from closing its connections while another still reads the shutdown
    broadcast. The immediate exit skips interpreter teardown, where gloo's and FSDP's C++ objects
    could otherwise be destroyed with a worker thread still attached (std::terminate, SIGABRT; seen
    about one run in three on a fast machine).
    """
    import torch.distributed as tdist

    if d is None or not tdist.is_initialized():
        return
    try:
        d.barrier_ctrl()
    finally:
        tdist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def serve_stdio() -> int:
    out: BinaryIO = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    dispatcher = Dispatcher()
    _announce("stdio")
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        answer, stop = dispatcher.handle_line(line)
        out.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
        if stop:
            break
    out.close()
    dispatcher.close()
    _finish(dispatcher.engine.dist)
    return 0


def _announce(transport: str) -> None:
    import torch

    from . import ENGINE_VERSION, PROTOCOL_VERSION
    from .autotune import threads_reason

    print(
        f"erl-engine {ENGINE_VERSION} ready ({transport}, protocol v{PROTOCOL_VERSION}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads: {threads_reason()})",
        file=sys.stderr,
        flush=True,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Limits of the HTTP transport. Every route goes through `Handler._dispatch`, which checks the token
# before it reads a single byte of body; these bound what an unauthenticated client can cost.
MAX_HTTP_BODY = 256 << 20  # an authenticated request's body (JSON); --max-body changes it
MAX_HEADER_BYTES = 32 << 10  # request line + headers, read before the token is known
HEADER_DEADLINE_S = 30.0  # a connection must have sent its whole head within this (idle included)
SOCKET_TIMEOUT_S = 60.0  # any single read or write that makes no progress for this long ends it
MAX_CONNECTIONS = 32  # connections served at once; a new one cuts the oldest not yet authorised, else 503


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


Route = Callable[[bytes], "tuple[int, dict[str, Any]]"]


def make_http_server(
    host: str,
    port: int,
    token: str,
    *,
    max_body: int = MAX_HTTP_BODY,
    max_connections: int = MAX_CONNECTIONS,
    header_deadline: float = HEADER_DEADLINE_S,
    dispatcher: Dispatcher | None = None,
) -> HTTPServer:
    """The HTTP transport. Binds first (a port in use fails before torch loads), then makes the engine.

    Routes are the `routes` table below: (method, path) -> function of the request body. Every request
    passes `_dispatch`: head within MAX_HEADER_BYTES and `header_deadline` seconds, then the bearer token, and
    only then the body (Content-Length required for POST, at most `max_body`)."""
    expected = f"Bearer {token}".encode()
    holder: dict[str, Dispatcher] = {}

    def call(body: bytes) -> tuple[int, dict[str, Any]]:
        answer, stop = holder["d"].handle_line(body)
        if stop:
            # Remote clients may not stop a shared server; the operator does (Ctrl-C / SIGTERM).
            answer = fail(answer.get("id"), ProtocolError("bad_request", "shutdown is not available over HTTP"))
        return 200, answer

    routes: dict[tuple[str, str], Route] = {
        ("GET", "/v1/health"): lambda _body: (200, {"ok": True}),
        ("POST", "/v1/call"): call,
    }

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

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self, status: int, code: str, problem: str) -> None:
            # The body (if any) is left unread, so the connection cannot be reused.
            self.close_connection = True
            self._send(status, fail(None, ProtocolError(code, problem)))

        def _dispatch(self, method: str) -> None:
            got = self.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(got, expected):
                self._refuse(401, "unauthorized", "missing or wrong bearer token")
                return
            self._deadline.cancel()
            self.server.waiting(self.connection, False)  # type: ignore[attr-defined]
            self.rfile.lift()  # type: ignore[attr-defined]
            route = routes.get((method, self.path.split("?", 1)[0]))
            if route is None:
                self._refuse(404, "bad_request", f"no such endpoint: {method} {self.path}")
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
            status, answer = route(body)
            self._send(status, answer)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._dispatch("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._dispatch("DELETE")

    # Threads only so that idle keep-alive connections do not block other clients; calls still run one
    # at a time under the dispatcher lock.
    server = _BoundedHTTPServer((host, port), Handler, max_connections)
    try:
        holder["d"] = dispatcher or Dispatcher()
    except BaseException:
        server.server_close()
        raise
    server.dispatcher = holder["d"]  # type: ignore[attr-defined]
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m erl_engine.server", description="The ERL compute engine.")
    ap.add_argument("--http", action="store_true", help="serve HTTP instead of stdio")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--token", default=None, help="bearer token (default: $ERL_ENGINE_TOKEN)")
    ap.add_argument(
        "--max-body", type=int, default=MAX_HTTP_BODY, help=f"largest request body in bytes (default {MAX_HTTP_BODY})"
    )
    ap.add_argument(
        "--header-timeout",
        type=float,
        default=HEADER_DEADLINE_S,
        help=f"seconds a connection has to send a request head (default {HEADER_DEADLINE_S:g})",
    )
    ap.add_argument(
        "--max-connections", type=int, default=MAX_CONNECTIONS, help=f"connections served at once (default {MAX_CONNECTIONS})"
    )
    ap.add_argument("--allow-remote", action="store_true", help="allow binding to a non-loopback address")
    args = ap.parse_args(argv)
    if "WORLD_SIZE" in os.environ and int(os.environ.get("RANK", "0")) != 0:
        return follow()
    if not args.http:
        return serve_stdio()
    token = args.token or os.environ.get("ERL_ENGINE_TOKEN")
    if not token:
        print("erl engine: a bearer token is required (--token or ERL_ENGINE_TOKEN)", file=sys.stderr)
        return 2
    if not _is_loopback(args.host) and not args.allow_remote:
        print(
            f"erl engine: refusing to listen on non-loopback address {args.host} without --allow-remote "
            "(prefer an SSH tunnel to 127.0.0.1)",
            file=sys.stderr,
        )
        return 2
    try:
        server = make_http_server(
            args.host,
            args.port,
            token,
            max_body=args.max_body,
            max_connections=args.max_connections,
            header_deadline=args.header_timeout,
        )
    except OSError as e:
        print(f"erl engine: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    dispatcher: Dispatcher = server.dispatcher  # type: ignore[attr-defined]
    _announce("http")
    host, port = server.server_address[:2]
    # The one line a parent process waits for: the actual port (useful with --port 0).
    print(f"erl-engine listening on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        dispatcher.close()
        _finish(dispatcher.engine.dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
