"""Metrics to TensorBoard and Weights & Biases, beside a run's metrics.jsonl (the source of truth).

A run starts this small process when its config asks for either (`tracking` in the run config,
src/train/tracking.ts); it loads no model and no torch. Usage:

    python -m erl_engine.tracking --run-dir DIR [--tensorboard] [--wandb offline|online]
                                  [--project P] [--name N] [--config-json FILE]

It answers one line on stdout, {"ready": true}, once the libraries are loaded (or exits 2 with one
line on stderr naming what is missing), then reads JSON lines on stdin, one per metrics record:

    {"step": 3, "metrics": {"reward/first": 0.25, "loss": 1.7, ...}}

and writes every finite number as a scalar at that step: TensorBoard event files in DIR/tensorboard
(tensorboard's own event writer), and a W&B run in DIR/wandb ("offline": a local run directory and
no network at all; `wandb sync DIR/wandb/offline-run-*` uploads it later). At the end of stdin it
flushes, finishes the W&B run and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any


def _fail(message: str) -> None:
    sys.stderr.write(f"erl tracking: {message}\n")
    sys.exit(2)


class TensorBoardSink:
    def __init__(self, logdir: str) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = Event, Summary
        self._writer = EventFileWriter(logdir)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        values = [self._summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
        self._writer.add_event(self._event(wall_time=time.time(), step=step, summary=self._summary(value=values)))

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    def __init__(self, run_dir: str, mode: str, project: str, name: str, config: dict[str, Any]) -> None:
        if mode == "offline":
            os.environ["WANDB_MODE"] = "offline"  # before the import: nothing may reach for the network
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self._run = wandb.init(
            project=project,
            name=name,
            dir=run_dir,
            mode=mode,
            config=config,
            settings=wandb.Settings(console="off", save_code=False, disable_git=True),
        )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log(scalars, step=step)

    def close(self) -> None:
        self._run.finish()


def scalars_of(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics record (text fields such as eval/split are not scalars)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        out[k] = float(v)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="erl_engine.tracking")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--wandb", choices=["offline", "online"])
    p.add_argument("--project", default="erl")
    p.add_argument("--name", default=None)
    p.add_argument("--config-json", default=None)
    a = p.parse_args(argv)
    sinks: list[Any] = []
    try:
        if a.tensorboard:
            try:
                sinks.append(TensorBoardSink(os.path.join(a.run_dir, "tensorboard")))
            except ImportError as e:
                _fail(f"tracking.tensorboard needs the Python package tensorboard in {sys.executable} ({e})")
        if a.wandb:
            config: dict[str, Any] = {}
            if a.config_json:
                with open(a.config_json, encoding="utf-8") as f:
                    config = json.load(f)
            try:
                sinks.append(WandbSink(a.run_dir, a.wandb, a.project, a.name or os.path.basename(a.run_dir), config))
            except ImportError as e:
                _fail(f"tracking.wandb needs the Python package wandb in {sys.executable} ({e})")
        print(json.dumps({"ready": True}), flush=True)
        for n, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                step, metrics = int(rec["step"]), rec["metrics"]
            except (ValueError, KeyError, TypeError) as e:
                _fail(f"stdin line {n}: not a metrics record ({e})")
            scalars = scalars_of(metrics)
            for s in sinks:
                s.log(step, scalars)
    finally:
        for s in sinks:
            s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
