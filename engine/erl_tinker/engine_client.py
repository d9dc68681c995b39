"""A client of the engine protocol (docs/engine.md) over a child process's stdio, for Python callers.

The engine runs in its own interpreter (ERL_PYTHON, else <repo>/.venv/bin/python) as
`python -m erl_engine.server`, exactly as the TypeScript client starts it (src/engine/client.ts).
Calls are serialised by a lock; an error answer raises EngineError with the engine's code and message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import deque
from typing import Any

from erl_engine import PROTOCOL_VERSION

ENGINE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(ENGINE_DIR)


class EngineError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def engine_python() -> str:
    return os.environ.get("ERL_PYTHON") or os.path.join(REPO, ".venv", "bin", "python")


class EngineProcess:
    def __init__(self, name: str = "engine") -> None:
        env = {**os.environ, "PYTHONPATH": ENGINE_DIR, "HF_HUB_OFFLINE": "1"}
        self.name = name
        self.proc = subprocess.Popen(
            [engine_python(), "-m", "erl_engine.server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        self.lock = threading.Lock()
        self.next_id = 1
        self.stderr_tail: deque[str] = deque(maxlen=20)
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        self.call("hello", {"protocolVersion": PROTOCOL_VERSION, "client": "erl_tinker"})

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.stderr_tail.append(line)
            print(f"[{self.name}] {line}", file=sys.stderr, flush=True)

    def call(self, method: str, params: dict[str, Any]) -> Any:
        with self.lock:
            if self.proc.poll() is not None:
                raise EngineError("engine_exited", f"the engine exited ({self.proc.returncode}): " + " | ".join(self.stderr_tail))
            rid = self.next_id
            self.next_id += 1
            assert self.proc.stdin is not None and self.proc.stdout is not None
            line = json.dumps({"v": PROTOCOL_VERSION, "id": rid, "method": method, "params": params}, separators=(",", ":"))
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()
                raw = self.proc.stdout.readline()
            except (BrokenPipeError, OSError) as e:
                raise EngineError("engine_exited", f"the engine went away ({e}): " + " | ".join(self.stderr_tail)) from None
            if not raw:
                self.proc.wait(timeout=10)
                raise EngineError("engine_exited", f"the engine exited ({self.proc.returncode}): " + " | ".join(self.stderr_tail))
        answer = json.loads(raw)
        if answer.get("id") != rid:
            raise EngineError("bad_response", f"answer id {answer.get('id')!r} for request {rid}")
        if not answer.get("ok"):
            err = answer.get("error") or {}
            raise EngineError(str(err.get("code", "internal")), str(err.get("message", "engine error")))
        return answer["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
