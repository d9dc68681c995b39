"""A LoRA adapter merged into its base model, as an ordinary HF directory: `erl models install` of a
model that the repository ships as an adapter (smollm2-135m-erl: SmolLM2-135M-Instruct after
`erl sft`, src/models/registry.ts).

The base is loaded in fp32, the adapter applied with peft and merged (W + (alpha/r) B A), and the
result saved as bf16 safetensors with the base's tokenizer and chat template, a provenance file
(the adapter's and the base's checksums, a logit probe of merged-and-saved against adapter-on-base)
and the model card. The output directory is replaced atomically.

    python -m erl_engine.merge_adapter --base DIR --adapter DIR --out DIR --name NAME
        [--adapter-sha256 HEX] [--card FILE]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from .model_dirs import PROVENANCE, publish, sha256_of, write_provenance  # noqa: E402

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class MergeError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[merge] {msg}", file=sys.stderr, flush=True)


def adapter_digest(adapter: str) -> str:
    """One SHA-256 over the adapter's config and weights (name, then bytes, in a fixed order)."""
    h = hashlib.sha256()
    for name in ADAPTER_FILES:
        path = os.path.join(adapter, name)
        if not os.path.exists(path):
            raise MergeError(f"{adapter}: no {name} (not a PEFT adapter directory)")
        h.update(name.encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def merge(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    digest = adapter_digest(args.adapter)
    if args.adapter_sha256 and digest != args.adapter_sha256:
        raise MergeError(f"{args.adapter}: SHA-256 {digest} differs from the expected {args.adapter_sha256}")
    if not os.path.exists(os.path.join(args.base, "config.json")):
        raise MergeError(f"{args.base}: the base model is not installed (no config.json)")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(args.base, local_files_only=True)
    peft_model = PeftModel.from_pretrained(base, args.adapter, is_trainable=False)
    probe = tok.apply_chat_template(
        [{"role": "user", "content": " A \t B \t\n C \t D \t"}], add_generation_prompt=True, tokenize=True,
        return_dict=False)
    ids = torch.tensor([list(probe)])
    with torch.no_grad():
        with_adapter = peft_model(input_ids=ids).logits.float()
    merged = peft_model.merge_and_unload()
    parent = os.path.dirname(os.path.abspath(args.out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(args.out)}.tmp-", dir=parent)
    try:
        merged.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        saved = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, local_files_only=True)
        with torch.no_grad():
            after = saved(input_ids=ids).logits.float()
        max_diff = float((after - with_adapter).abs().max())
        agree = float((after.argmax(-1) == with_adapter.argmax(-1)).float().mean())
        if args.card:
            shutil.copyfile(args.card, os.path.join(tmp, "README.md"))
        base_prov_path = os.path.join(args.base, PROVENANCE)
        base_prov = json.load(open(base_prov_path, encoding="utf-8")) if os.path.exists(base_prov_path) else None
        files = {n: sha256_of(os.path.join(tmp, n)) for n in sorted(os.listdir(tmp))}
        prov = {
            "format": "erl-model-provenance",
            "name": args.name,
            "source": {
                "kind": "adapter",
                "adapterSha256": digest,
                "base": os.path.basename(os.path.abspath(args.base)),
                "baseSource": (base_prov or {}).get("source"),
            },
            "conversion": {
                "savedDtype": "bfloat16",
                "transformers": __import__("transformers").__version__,
                "peft": __import__("peft").__version__,
                "torch": torch.__version__.split("+")[0],
                "probeTokens": len(probe),
                "probeMaxAbsLogitDiff": max_diff,
                "probeArgmaxAgreement": agree,
                "seconds": round(time.time() - t0, 1),
                "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "files": files,
        }
        write_provenance(tmp, prov)
        publish(tmp, args.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"done in {time.time() - t0:.0f} s: {args.out} (saved bf16 vs adapter-on-base fp32: max |logit diff| "
        f"{max_diff:.3g}, argmax agreement {agree:.2f} on a {len(probe)}-token probe)")
    return prov


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m erl_engine.merge_adapter", description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the base model's HF directory")
    ap.add_argument("--adapter", required=True, help="the PEFT adapter directory")
    ap.add_argument("--out", required=True, help="output directory (replaced atomically)")
    ap.add_argument("--name", required=True, help="the model's name in the provenance file")
    ap.add_argument("--adapter-sha256", help="expected digest of the adapter (adapter_digest)")
    ap.add_argument("--card", help="model card (markdown) copied to README.md")
    args = ap.parse_args(argv)
    try:
        merge(args)
    except MergeError as e:
        print(f"merge: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
