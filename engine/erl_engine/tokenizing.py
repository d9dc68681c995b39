"""The engine's tokenizer calls, torch-free so that another process renders exactly the same ids: the
engine (engine.py) and the `engine.kind: "tinker"` bridge (erl_tinker/bridge.py), which keeps the
tokenizer on the client's side of a Tinker service.

- A chat is rendered by the model's own chat template to text, then encoded without special tokens
  (the template writes them).
- The end-of-sequence ids are every eos id the model's config, its generation config and its tokenizer
  declare.
"""

from __future__ import annotations

from typing import Any, Iterable

from .protocol import ProtocolError


def chat_text(tok: Any, chat: dict[str, Any], path: str) -> str:
    if not getattr(tok, "chat_template", None):
        raise ProtocolError("bad_request", "this model's tokenizer has no chat template (tokenizer_config.json)")
    try:
        return str(
            tok.apply_chat_template(chat["messages"], tokenize=False, add_generation_prompt=chat.get("addGenerationPrompt", False))
        )
    except Exception as e:  # jinja errors from the model's own template
        raise ProtocolError("bad_request", f"{path}.messages: the chat template failed: {e}") from None


def render_chats(tok: Any, chats: list[dict[str, Any]], paths: list[str]) -> list[list[int]]:
    texts = [chat_text(tok, c, p) for c, p in zip(chats, paths)]
    return [list(tok.encode(t, add_special_tokens=False)) for t in texts]


def encode(tok: Any, text: str, add_special_tokens: bool) -> list[int]:
    return list(tok.encode(text, add_special_tokens=add_special_tokens))


def decode(tok: Any, ids: list[int], skip_special_tokens: bool) -> str:
    return str(tok.decode(ids, skip_special_tokens=skip_special_tokens))


def eos_ids(configs: Iterable[Any], tokenizer: Any) -> list[int]:
    """All end-of-sequence ids the model's configs and tokenizer declare (deduplicated, sorted)."""
    ids: set[int] = set()
    for src in configs:
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)
