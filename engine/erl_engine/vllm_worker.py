"""Functions the vLLM sampler runs inside vLLM's worker processes (`LLM.apply_model`). They live in
their own module because vLLM pickles them by reference and the sampler itself runs as __main__."""

from __future__ import annotations

from typing import Any


def retie_embeddings(model: Any) -> bool:
    """Re-ties the output head to the input embedding after an in-place weight reload.

    vLLM 0.32's reload loads the embedding into a new tensor and puts the head's old kernel state
    back, and on CPU the head multiplies through a oneDNN handle packed from the old weight. So the
    head takes the embedding's parameter again (as vLLM's `tie_weights` does at start-up) and its
    weight is processed again (re-packed on CPU)."""
    head = getattr(model, "lm_head", None)
    emb = getattr(getattr(model, "model", None), "embed_tokens", None)
    emb = getattr(emb, "base_layer", emb)
    if head is None or emb is None or head.weight.shape != emb.weight.shape:
        return False
    head.weight = emb.weight
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)
    return True
