"""Drives `erl engine serve --tinker` with the official tinker SDK (test/tinker/tinker.itest.ts): a LoRA
training client, forward and forward_backward with each built-in loss, optim_step, checkpoints, sampling,
and refusals. Prints one JSON object: every call's inputs and outputs, for the test to replay on the
engine's own protocol and compare.

usage: python sdk_drive.py <base_url> <api_key> <base_model>
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import tinker
from tinker import types


def datum(ids: list[int], **inputs: list[float]) -> types.Datum:
    return types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                       loss_fn_inputs={"target_tokens": ids[1:], **inputs})


def main() -> None:
    base_url, key, base_model = sys.argv[1:4]
    out: dict = {"steps": []}
    sc = tinker.ServiceClient(base_url=base_url, api_key=key)
    caps = tinker.RestClient(base_url=base_url, api_key=key).get_server_capabilities().result() \
        if hasattr(tinker, "RestClient") else None
    out["capabilities"] = [m.model_name for m in caps.supported_models] if caps else None
    tc = sc.create_lora_training_client(base_model=base_model, rank=4, seed=0).result()
    info = tc.get_info()
    out["info"] = {"model_id": info.model_id, "lora_rank": info.lora_rank, "model_name": info.model_data.model_name}
    tok = tc.get_tokenizer()
    rng = np.random.default_rng(0)
    seqs = [tok.encode(t) for t in ("Rule: the agent is A; reach G.", "Board:\n.A.\n..G\nMove right.", "down")]
    seqs = [s for s in seqs if len(s) >= 3]
    out["seqs"] = seqs

    def record(op: str, data: list[dict], loss_fn: str | None, config: dict | None, res: types.ForwardBackwardOutput) -> None:
        out["steps"].append({"op": op, "loss_fn": loss_fn, "config": config, "data": data,
                             "loss": res.metrics["loss:sum"],
                             "logprobs": [o["logprobs"].tolist() for o in res.loss_fn_outputs]})

    ce_inputs = [{"weights": [0.0] + [1.0] * (len(s) - 2)} for s in seqs]
    res = tc.forward([datum(s, **w) for s, w in zip(seqs, ce_inputs)], "cross_entropy").result()
    record("forward", ce_inputs, "cross_entropy", None, res)

    res = tc.forward_backward([datum(s, **w) for s, w in zip(seqs, ce_inputs)], "cross_entropy").result()
    record("forward_backward", ce_inputs, "cross_entropy", None, res)
    adam = types.AdamParams(learning_rate=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.01, grad_clip_norm=1.0)
    om = tc.optim_step(adam).result()
    out["steps"].append({"op": "optim_step", "adam": adam.model_dump(), "metrics": om.metrics})

    # The RL losses' old log-probs: the current weights' own, shifted by 0.05 nats, so that every ratio
    # is exp(0.05) and the PPO clip (1.02 below) acts on every token with a positive advantage.
    res = tc.forward([datum(s, **w) for s, w in zip(seqs, ce_inputs)], "cross_entropy").result()
    record("forward", ce_inputs, "cross_entropy", None, res)
    now_lp = [o["logprobs"].tolist() for o in res.loss_fn_outputs]
    rl_inputs = []
    for s, lp in zip(seqs, now_lp):
        n = len(s) - 1
        rl_inputs.append({"logprobs": [float(x) - 0.05 for x in lp],
                          "advantages": [0.0] + [float(a) for a in rng.normal(size=n - 1)]})
    res = tc.forward_backward([datum(s, **x) for s, x in zip(seqs, rl_inputs)], "importance_sampling").result()
    record("forward_backward", rl_inputs, "importance_sampling", None, res)
    ppo_cfg = {"clip_low_threshold": 0.9, "clip_high_threshold": 1.02}
    res = tc.forward_backward([datum(s, **x) for s, x in zip(seqs, rl_inputs)], "ppo", ppo_cfg).result()
    record("forward_backward", rl_inputs, "ppo", ppo_cfg, res)
    om = tc.optim_step(adam).result()
    out["steps"].append({"op": "optim_step", "adam": adam.model_dump(), "metrics": om.metrics})

    saved = tc.save_state("after-two-steps").result().path
    sampler_path = tc.save_weights_for_sampler("w2").result().path
    out["paths"] = {"state": saved, "sampler": sampler_path}
    prompt = seqs[1][:6]
    params = types.SamplingParams(max_tokens=10, seed=5, temperature=1.0)
    live = tc.save_weights_and_get_sampling_client().result()
    r_live = live.sample(types.ModelInput.from_ints(prompt), 2, params).result()
    out["steps"].append({"op": "sample", "prompt": prompt, "n": 2, "seed": 5, "max_tokens": 10,
                         "tokens": [q.tokens for q in r_live.sequences],
                         "logprobs": [q.logprobs for q in r_live.sequences],
                         "stop": [q.stop_reason for q in r_live.sequences]})
    out["prompt_logprobs"] = live.compute_logprobs(types.ModelInput.from_ints(prompt)).result()

    # A third step moves the weights on; the saved sampler path and the earlier sampling client still
    # sample the weights they were made from.
    res = tc.forward_backward([datum(s, **w) for s, w in zip(seqs, ce_inputs)], "cross_entropy").result()
    tc.optim_step(adam).result()
    moved = tc.forward([datum(s, **w) for s, w in zip(seqs, ce_inputs)], "cross_entropy").result()
    out["moved_loss"] = moved.metrics["loss:sum"]
    again = live.sample(types.ModelInput.from_ints(prompt), 2, params).result()
    from_path = sc.create_sampling_client(model_path=sampler_path).result()
    r_path = from_path.sample(types.ModelInput.from_ints(prompt), 2, params).result()
    out["snapshot_tokens"] = {"live_again": [q.tokens for q in again.sequences],
                              "from_path": [q.tokens for q in r_path.sequences]}

    # The saved state, loaded into a new training client, gives back the forward of two steps.
    tc2 = sc.create_training_client_from_state_with_optimizer(saved).result()
    back = tc2.forward([datum(s, **w) for s, w in zip(seqs, ce_inputs)], "cross_entropy").result()
    out["restored_loss"] = back.metrics["loss:sum"]

    # forward_backward_custom (a client-side loss in torch): the SDK's forward, then cross_entropy with
    # the loss's gradient as weights. Cross-entropy written as a custom loss reports the same loss.
    import torch

    def custom_ce(data: list[types.Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return sum(-(lp * torch.tensor(d.loss_fn_inputs["weights"].data)).sum() for d, lp in zip(data, logprobs)), {}

    ce_data = [datum(s, **w) for s, w in zip(seqs, ce_inputs)]
    out["custom_loss"] = tc.forward_backward_custom(ce_data, custom_ce).result().metrics["loss:sum"]
    out["custom_reference"] = tc.forward(ce_data, "cross_entropy").result().metrics["loss:sum"]

    # Refusals are readable exceptions, not hangs or retry loops.
    errors = {}
    t0 = time.time()
    try:
        tc.forward_backward([datum(s, **x) for s, x in zip(seqs, rl_inputs)], "cispo").result()
    except Exception as e:  # noqa: BLE001
        errors["cispo"] = f"{type(e).__name__}: {e}"
    try:
        sc.create_lora_training_client(base_model="Qwen/Qwen3-8B", rank=4).result()
    except Exception as e:  # noqa: BLE001
        errors["other_model"] = f"{type(e).__name__}: {e}"
    try:
        live.sample(types.ModelInput.from_ints(prompt), 1, params, topk_sample_logprobs=3).result()
    except Exception as e:  # noqa: BLE001
        errors["topk"] = f"{type(e).__name__}: {e}"
    out["errors"] = errors
    out["errors_seconds"] = time.time() - t0
    try:
        tinker.ServiceClient(base_url=base_url, api_key="tml-wrong").create_lora_training_client(
            base_model=base_model, rank=4).result()
    except Exception as e:  # noqa: BLE001
        out["wrong_key"] = f"{type(e).__name__}: {str(e)[:200]}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
