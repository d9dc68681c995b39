"""erl_tinker: this project's side of the Tinker API, in both directions (docs/tinker.md).

- `server.py` serves the engine behind the Tinker REST API (`erl engine serve --tinker`): the official
  SDK and tinker-cookbook recipes run against any model directory the engine loads.
- `bridge.py` is an engine that speaks this project's protocol and forwards every call to a Tinker
  service through the official SDK (`engine.kind: "tinker"` in run configs).

Both run in their own virtualenv (.venv-tinker, scripts/setup-tinker.sh) with the SDK; neither imports
torch's engine code: the server drives engine processes over the engine protocol (`engine_client.py`).
"""
