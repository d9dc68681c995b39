"""Builds the tiny test model fixture (test/fixtures/tiny-model/) and the character-level tokenizer.

The fixture is a 2-layer Llama-architecture model with random weights and a character-level vocabulary
(printable ASCII, TAB, newline, "√" and a few special tokens). It exists so that every part of the
system can run the real engine in tests in well under a second; it knows no language.

The chat template renders each message as `<|role|>content<|end|>` with nothing between messages and
no per-conversation prefix, and the generation prompt is just `<|assistant|>`. Because the vocabulary
is one token per character and special tokens are atomic, rendering a conversation message by message
gives exactly the ids of a one-shot render, and a sampled assistant turn (content + `<|end|>`) followed
by the next message equals the render of the longer conversation.

Usage: python -m erl_engine.make_fixture [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

SPECIAL_TOKENS = [
    "<|pad|>",
    "<|unk|>",
    "<|end|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
]
PAD, UNK, END = "<|pad|>", "<|unk|>", "<|end|>"

# Jinja chat template. No whitespace outside the tags, so nothing but the tokens below is emitted.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# The tiny fixture's shape: ~80k parameters, about 0.35 MB of fp32 safetensors.
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def char_vocab() -> list[str]:
    """Special tokens first, then TAB, newline, printable ASCII and the square-root sign."""
    chars = ["\t", "\n"] + [chr(c) for c in range(32, 127)] + ["√"]
    return SPECIAL_TOKENS + chars


def build_tokenizer_json() -> dict[str, Any]:
    """A `tokenizers` JSON: WordLevel over single characters, split into characters by a regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(char_vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own pre-token, so the WordLevel model maps it straight to its id.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return json.loads(tok.to_str())


def model_config_dict(vocab_size: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    vocab = char_vocab()
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "bos_token_id": None,
        "eos_token_id": vocab.index(END),
        "pad_token_id": vocab.index(PAD),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        **TINY_CONFIG,
    }
    if overrides:
        cfg.update(overrides)
    return cfg


def write_tokenizer(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(build_tokenizer_json(), f, ensure_ascii=False, indent=1)
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": TINY_CONFIG["max_position_embeddings"],
        "pad_token": PAD,
        "unk_token": UNK,
        "eos_token": END,
        "bos_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tok_cfg, f, ensure_ascii=False, indent=1)
    with open(os.path.join(out, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump({"pad_token": PAD, "unk_token": UNK, "eos_token": END}, f, indent=1)


def make_fixture(out: str, seed: int = 0, overrides: dict[str, Any] | None = None) -> None:
    """Writes config.json, model.safetensors, generation_config.json and the tokenizer files to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    write_tokenizer(out)
    cfg = LlamaConfig(**model_config_dict(len(char_vocab()), overrides))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.save_pretrained(out, safe_serialization=True)


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.normpath(os.path.join(here, "..", "..", "test", "fixtures", "tiny-model"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    make_fixture(args.out, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
