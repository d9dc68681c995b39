"""erl-tiny pretraining: tokenizer fitting, the training loop, export. The TypeScript corpus writer
(`src/pretrain/`) produces JSONL shards of chats; this module turns them into token ids with the
model's own chat template and trains with the engine's primitives: the same model class, the
engine's per-token log-probs (`engine.token_logprobs`) and weighted cross-entropy
(`losses.compute_loss`), and AdamW with grad-norm clipping as in `optim_step`. See
docs/decisions/0013-tiny-pretraining.md for why the loop runs inside the engine package instead of over
the protocol.

Subcommands (python -m erl_engine.pretrain ...):
  tokenizer --corpus DIR --out DIR [--vocab N]          fit the tokenizer on the last shards
  train --corpus DIR --work DIR [--preset tiny|ci] ...   train (resumes from WORK/ckpt when present)
  export --work DIR --out DIR                            write the HF model directory

Checkpoints (WORK/ckpt/state.pt) hold weights, optimizer, step, the shard/batch position and the
tokens seen, written atomically every --ckpt-minutes; a run stopped at any point continues exactly
where it was with --resume.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import random
import sys
import time
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from .engine import token_logprobs  # noqa: E402
from .losses import LossSpec, compute_loss  # noqa: E402

# The chat template of the engine's test fixture: `<|role|>content<|end|>` with nothing between
# messages, so a conversation rendered message by message gives the ids of a one-shot render.
from .make_fixture import CHAT_TEMPLATE  # noqa: E402

# ---------------------------------------------------------------------------------------------------
# Tokenizer

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
PAD, END = "<|pad|>", "<|end|>"
ROLES = ("system", "user", "assistant", "tool")
# Everything a board may show; each board cell ` s ` + TAB is one token.
SYMBOLS = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["√"]
CELL_TOKENS = [f" {s} \t" for s in SYMBOLS]


def shard_files(corpus: str) -> list[str]:
    return sorted(glob.glob(os.path.join(corpus, "shard-*.jsonl")))


def read_docs(path: str) -> list[dict[str, Any]]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{i}: bad JSON: {e}") from None
            if not isinstance(d, dict) or not isinstance(d.get("messages"), list):
                raise SystemExit(f"{path}:{i}: expected an object with a `messages` list")
            docs.append(d)
    return docs


def fit_tokenizer(corpus: str, out: str, vocab: int, shards: int = 4, max_len: int = 2048, end: int = 0) -> None:
    """Byte-level BPE fitted to the corpus text, plus one atomic token per board cell. Fitted on the
    `shards` shards before shard `end` (0: the corpus's last shards)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files = shard_files(corpus)
    files = (files[:end] if end > 0 else files)[-shards:]  # late shards: every document kind, every board size
    if not files:
        raise SystemExit(f"{corpus}: no shard-*.jsonl files to fit the tokenizer on")

    def texts():
        for f in files:
            for d in read_docs(f):
                for m in d["messages"]:
                    yield m["content"]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # Cells are added first so that the trainer never sees them (they are cut out before BPE).
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in CELL_TOKENS])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in CELL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END,
        pad_token=PAD,
        model_max_length=max_len,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    os.makedirs(out, exist_ok=True)
    fast.save_pretrained(out)
    print(json.dumps({"tokenizer": out, "vocab": len(fast)}))


def load_tok(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


class Renderer:
    """Chat → (ids, weights) with the chat template's exact pieces; weights per role."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.end = tok.convert_tokens_to_ids(END)
        self.head = {r: tok.convert_tokens_to_ids(f"<|{r}|>") for r in ROLES}

    def render(self, doc: dict[str, Any]) -> tuple[list[int], list[float]]:
        obs_w = float(doc.get("observationWeight", 0.0))
        msgs = doc["messages"]
        contents = self.tok([m["content"] for m in msgs], add_special_tokens=False)["input_ids"]
        ids: list[int] = []
        ws: list[float] = []
        for m, c in zip(msgs, contents):
            role = m["role"]
            w = 1.0 if role == "assistant" else (obs_w if role in ("user", "tool") else 0.0)
            ids.append(self.head[role])
            ws.append(0.0)
            ids.extend(c)
            ws.extend([w] * len(c))
            ids.append(self.end)
            ws.append(w)
        return ids, ws


# ---------------------------------------------------------------------------------------------------
# Model

PRESETS: dict[str, dict[str, Any]] = {
    # ~1.3M parameters (with an ~800-token vocabulary); 6 layers because look-ups and planning need
    # depth, narrow because this shared 2-core CPU gave only ~0.5-3k tokens/s while others worked.
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
    },
    # For the end-to-end CI test: runs in seconds.
    "ci": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
    },
}


def model_config(tok: Any, preset: str) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids(END),
        pad_token_id=tok.convert_tokens_to_ids(PAD),
        hidden_act="silu",
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attention_bias=False,
        initializer_range=0.02,
        architectures=["LlamaForCausalLM"],
        **PRESETS[preset],
    )


# ---------------------------------------------------------------------------------------------------
# Training


def batches_of(rows: list[tuple[list[int], list[float], str]], budget: int, rng: random.Random) -> list[list[int]]:
    """Length-bucketed batches whose padded size (rows × longest) stays within `budget` tokens."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        n = len(rows[i][0])
        if cur and max(longest, n) * (len(cur) + 1) > budget:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def warmup_cosine(step: int, peak: float, warmup: int, total: int, min_frac: float) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine down to `peak * min_frac` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def lr_at(step: int, args: argparse.Namespace, restart_step: int | list[int] | None = None) -> float:
    """The schedule: one warm-up + cosine over `total_steps`; from each restart step on (the step at
    which training first read one of the `--restart-shard` shards), a fresh warm-up + cosine peaking
    at `--restart-lr` over `--restart-steps`, counted from the latest restart reached. Restarts are
    tied to shards, not step counts, so a run resumed from a checkpoint taken before a new phase and a
    run from scratch get the same schedule."""
    starts = [restart_step] if isinstance(restart_step, int) else list(restart_step or [])
    reached = [r for r in starts if step >= r]
    if reached:
        return warmup_cosine(step - max(reached), args.restart_lr, args.warmup, args.restart_steps, args.min_lr_frac)
    return warmup_cosine(step, args.lr, args.warmup, args.total_steps, args.min_lr_frac)


def restart_shards(arg: str) -> list[int]:
    """`--restart-shard`: comma-separated shard numbers ("400,500"); 0 or empty for none."""
    try:
        shards = sorted({int(x) for x in arg.split(",") if x.strip() != ""})
    except ValueError:
        raise SystemExit(f"--restart-shard: expected comma-separated shard numbers, got {arg!r}") from None
    return [x for x in shards if x > 0]


def record_restarts(st: dict[str, Any], shards: list[int]) -> None:
    """Records in the state, once, the step at which each restart shard is first read. A state from
    before restarts were a list (one `restart_step`) counts it as the first restart shard's."""
    done: dict[str, int] = st.setdefault("restarts", {})
    legacy = st.pop("restart_step", None)
    if legacy is not None and shards and str(shards[0]) not in done:
        done[str(shards[0])] = legacy
    for sh in shards:
        if st["shard"] >= sh and str(sh) not in done:
            done[str(sh)] = st["step"]
            print(json.dumps({"restart": st["step"], "shard": sh}), flush=True)


def save_ckpt(path: str, state: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(args: argparse.Namespace) -> None:
    from transformers import LlamaForCausalLM

    torch.set_num_threads(args.threads)
    tok = load_tok(args.tokenizer)
    rend = Renderer(tok)
    os.makedirs(args.work, exist_ok=True)
    ckpt_path = os.path.join(args.work, "ckpt", "state.pt")
    log_path = os.path.join(args.work, "train-log.jsonl")
    cfg = model_config(tok, args.preset)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    st = {"step": 0, "shard": 0, "batch": 0, "tokens": 0, "seconds": 0.0}
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        st = ck["state"]
        print(f"resumed at step {st['step']} (shard {st['shard']}, batch {st['batch']})", flush=True)
    nparams = sum(p.numel() for p in model.parameters())
    print(json.dumps({"params": nparams, "vocab": len(tok), "preset": args.preset}), flush=True)
    model.train()
    autocast = torch.autocast(device_type="cpu", dtype=torch.bfloat16) if args.bf16 else torch.autocast("cpu", enabled=False)
    spec = LossSpec(name="cross_entropy", aggregation="token-mean")
    t_start = time.time()
    seconds0 = st["seconds"]
    last_ckpt = time.time()
    acc: dict[str, list[float]] = {}

    def checkpoint() -> None:
        st["seconds"] = seconds0 + (time.time() - t_start)
        save_ckpt(ckpt_path, {"model": model.state_dict(), "opt": opt.state_dict(), "state": dict(st), "config": cfg.to_dict()})

    while st["step"] < args.max_steps:
        if args.until_shard > 0 and st["shard"] >= args.until_shard:
            break
        files = shard_files(args.corpus)
        if st["shard"] >= len(files):
            if args.wait_for_shards > 0:
                time.sleep(args.wait_for_shards)
                continue
            break
        docs = read_docs(files[st["shard"]])
        rows = []
        for d in docs:
            ids, ws = rend.render(d)
            if len(ids) <= args.max_len:
                rows.append((ids, ws, d.get("kind", "?")))
        batches = batches_of(rows, args.batch_tokens, random.Random(f"{args.seed}/{st['shard']}"))
        while st["batch"] < len(batches) and st["step"] < args.max_steps:
            idx = batches[st["batch"]]
            T = max(len(rows[i][0]) for i in idx) - 1
            inp = torch.full((len(idx), T), rend.end, dtype=torch.long)
            tgt = torch.full((len(idx), T), rend.end, dtype=torch.long)
            w = torch.zeros((len(idx), T))
            for b, i in enumerate(idx):
                ids, ws, _ = rows[i]
                n = len(ids) - 1
                inp[b, :n] = torch.tensor(ids[:-1])
                tgt[b, :n] = torch.tensor(ids[1:])
                w[b, :n] = torch.tensor(ws[1:])
            record_restarts(st, restart_shards(args.restart_shard))
            lr = lr_at(st["step"], args, list(st["restarts"].values()))
            for g in opt.param_groups:
                g["lr"] = lr
            logp, _ = token_logprobs(model, inp, tgt, autocast)
            loss, _ = compute_loss(spec, logp, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
            opt.step()
            st["step"] += 1
            st["batch"] += 1
            st["tokens"] += int(sum(len(rows[i][0]) for i in idx))
            with torch.no_grad():
                tok_loss = (-logp.detach() * (w > 0.5)).sum(1) / (w > 0.5).sum(1).clamp(min=1)
                for b, i in enumerate(idx):
                    if (w[b] > 0.5).any():
                        acc.setdefault(rows[i][2], []).append(float(tok_loss[b]))
            if st["step"] % args.log_every == 0:
                el = seconds0 + time.time() - t_start
                rec = {
                    "step": st["step"],
                    "shard": st["shard"],
                    "tokens": st["tokens"],
                    "seconds": round(el, 1),
                    "tok_per_s": round(st["tokens"] / max(1e-9, el)),
                    "lr": round(lr, 6),
                    "loss": round(float(loss.detach()), 4),
                    "grad_norm": round(gn, 3),
                    "loss_by_kind": {k: round(sum(v) / len(v), 4) for k, v in sorted(acc.items())},
                }
                acc = {}
                print(json.dumps(rec), flush=True)
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
            if time.time() - last_ckpt > args.ckpt_minutes * 60:
                checkpoint()
                last_ckpt = time.time()
            if args.minutes and time.time() - t_start > args.minutes * 60:
                checkpoint()
                print("time limit reached", flush=True)
                return
        if st["batch"] >= len(batches):
            st["shard"] += 1
            st["batch"] = 0
    checkpoint()
    print(json.dumps({"done": True, **st}), flush=True)


def export(args: argparse.Namespace) -> None:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ck = torch.load(os.path.join(args.work, "ckpt", "state.pt"), map_location="cpu", weights_only=False)
    cfg = LlamaConfig(**{k: v for k, v in ck["config"].items() if k not in ("transformers_version",)})
    model = LlamaForCausalLM(cfg)
    model.load_state_dict(ck["model"])
    model.generation_config = GenerationConfig(
        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, bos_token_id=None
    )
    os.makedirs(args.out, exist_ok=True)
    # bf16 weights halve the file; the engine upcasts trainable weights to fp32 on load.
    model.to(torch.bfloat16 if args.bf16_weights else torch.float32).save_pretrained(args.out, safe_serialization=True)
    load_tok(args.tokenizer).save_pretrained(args.out)
    with open(os.path.join(args.out, "training_state.json"), "w", encoding="utf-8") as f:
        json.dump(ck["state"], f, indent=1)
    print(json.dumps({"exported": args.out, **ck["state"]}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m erl_engine.pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer")
    t.add_argument("--corpus", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--vocab", type=int, default=2048)
    t.add_argument("--shards", type=int, default=4)
    t.add_argument("--end", type=int, default=0, help="fit on the shards before this one (0: the last ones)")
    r = sub.add_parser("train")
    r.add_argument("--corpus", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--tokenizer", required=True)
    r.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--resume", action="store_true")
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--min-lr-frac", type=float, default=0.1)
    r.add_argument("--warmup", type=int, default=60)
    r.add_argument("--total-steps", type=int, default=8000)
    r.add_argument("--max-steps", type=int, default=10**9)
    r.add_argument("--restart-shard", default="", help="comma-separated shards; a fresh warm-up + cosine starts when each is first read")
    r.add_argument("--restart-lr", type=float, default=3e-4)
    r.add_argument("--restart-steps", type=int, default=4000)
    r.add_argument("--minutes", type=float, default=0.0)
    r.add_argument("--until-shard", type=int, default=0, help="stop (with a checkpoint) before reading this shard (0: read them all)")
    r.add_argument("--batch-tokens", type=int, default=4096)
    r.add_argument("--max-len", type=int, default=1700)
    r.add_argument("--threads", type=int, default=1, help="1 is far faster than 2 on a busy 2-core machine (no OpenMP spin-waiting)")
    r.add_argument("--bf16", type=int, default=1)
    r.add_argument("--log-every", type=int, default=10)
    r.add_argument("--ckpt-minutes", type=float, default=5.0)
    r.add_argument("--wait-for-shards", type=float, default=0.0, help="poll for new shards instead of stopping")
    e = sub.add_parser("export")
    e.add_argument("--work", required=True)
    e.add_argument("--tokenizer", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--bf16-weights", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "tokenizer":
        fit_tokenizer(args.corpus, args.out, args.vocab, args.shards, end=args.end)
    elif args.cmd == "train":
        train(args)
    else:
        export(args)


if __name__ == "__main__":
    sys.exit(main())
