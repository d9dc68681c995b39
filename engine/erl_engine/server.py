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
import json
import os
import sys
import threading
import traceback
from http.server import HTTPServer
from typing import Any, BinaryIO

from .http_gate import (
    HEADER_DEADLINE_S,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    MAX_HTTP_BODY,
    Reply,
    Request,
    Route,
    is_loopback,
    make_gated_server,
)
from .protocol import ProtocolError, fail, ok, parse_request

__all__ = ["MAX_HEADER_BYTES", "Dispatcher", "main", "make_http_server"]


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

    Routes are the `routes` table below: (method, path) -> function of the request. Every request
    passes the gate of http_gate.py: head within MAX_HEADER_BYTES and `header_deadline` seconds, then
    the bearer token, and only then the body (Content-Length required for POST, at most `max_body`)."""
    expected = f"Bearer {token}".encode()
    holder: dict[str, Dispatcher] = {}

    def json_reply(status: int, body: dict[str, Any]) -> Reply:
        return Reply(status, json.dumps(body, separators=(",", ":")).encode())

    def call(req: Request) -> Reply:
        answer, stop = holder["d"].handle_line(req.body)
        if stop:
            # Remote clients may not stop a shared server; the operator does (Ctrl-C / SIGTERM).
            answer = fail(answer.get("id"), ProtocolError("bad_request", "shutdown is not available over HTTP"))
        return json_reply(200, answer)

    routes: dict[tuple[str, str], Route] = {
        ("GET", "/v1/health"): lambda _req: json_reply(200, {"ok": True}),
        ("POST", "/v1/call"): call,
    }

    def refuse(status: int, code: str, problem: str) -> Reply:
        if code == "unauthorized":
            problem = "missing or wrong bearer token"
        return json_reply(status, fail(None, ProtocolError(code, problem)))

    # Threads only so that idle keep-alive connections do not block other clients; calls still run one
    # at a time under the dispatcher lock.
    server = make_gated_server(
        host,
        port,
        authorized=lambda headers: hmac.compare_digest(headers.get("Authorization", "").encode(), expected),
        resolve=lambda method, path: routes.get((method, path)),
        refuse=refuse,
        max_body=max_body,
        max_connections=max_connections,
        header_deadline=header_deadline,
    )
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
    if not is_loopback(args.host) and not args.allow_remote:
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
