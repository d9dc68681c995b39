"""Loading an exported policy (`erl export`) on another machine, as another user, from any folder.

A full export is a plain Hugging Face directory. A LoRA export is a peft adapter whose
`adapter_config.json` names its base model portably (never by an absolute path of the machine it was
made on), in one of two forms:
  - a known model's registry name, e.g. "erl-tiny" or "smollm2-135m-instruct": the directory
    models/<name> of an erl checkout (`npx erl models install <name>` builds the installable ones);
  - a path relative to the root of an erl checkout, e.g. "test/fixtures/tiny-model".
`resolve_base` turns that name into a directory; `load_export` returns the model and its tokenizer.

    python -c "from erl_engine.portable import load_export; model, tok = load_export('exported/policy')"

(with PYTHONPATH=<checkout>/engine; `repo` defaults to the checkout this file belongs to).
"""

from __future__ import annotations

import json
import os
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_base(name: str, repo: str = REPO) -> str:
    """The directory of an adapter's base model named `name` (see the module docstring)."""
    if os.path.isabs(name):
        if os.path.isdir(name):
            return name
        raise FileNotFoundError(f"base model {name}: no such directory")
    candidates = []
    if "/" not in name and "\\" not in name:
        candidates.append(os.path.join(repo, "models", name))
    candidates.append(os.path.join(repo, name))
    for c in candidates:
        if os.path.isfile(os.path.join(c, "config.json")):
            return c
    hint = f"install it with `npx erl models install {name}` or " if "/" not in name else ""
    raise FileNotFoundError(
        f"base model {name!r} not found (looked in {', '.join(candidates)}); {hint}put the model directory there"
    )


def load_export(directory: str, repo: str = REPO) -> tuple[Any, Any]:
    """(model, tokenizer) of an exported policy: a full HF directory, or a LoRA adapter over its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = os.path.join(directory, "adapter_config.json")
    if os.path.isfile(adapter):
        from peft import PeftModel

        with open(adapter, encoding="utf-8") as f:
            base = resolve_base(json.load(f)["base_model_name_or_path"], repo)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), directory)
    else:
        model = AutoModelForCausalLM.from_pretrained(directory)
    return model, AutoTokenizer.from_pretrained(directory)
