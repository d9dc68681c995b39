"""Runs tinker-cookbook's two minimal recipes, unchanged, against `erl engine serve --tinker` on erl-tiny
(test/tinker/cookbook.itest.ts): first its supervised loop (recipes/sl_loop.py), then its RL loop
(recipes/rl_loop.py) in the same log directory, so that the RL loop resumes from the supervised loop's
final state through the cookbook's own checkpoint code.

The recipes' code runs as shipped. Two look-ups they make cannot be answered here and are answered
locally instead: their data sets (`datasets.load_dataset` of No Robots and GSM8K, on the Hugging Face
hub, which is not reachable) are small real `datasets.Dataset`s of the same columns, and the renderer
the cookbook recommends for a model (`model_info.get_recommended_renderer_name`, a table of hosted
models that has no erl-tiny) is the cookbook's generic "role_colon".

The supervised data teach the answer format the RL loop grades (`\\boxed{N}`). After 120 steps
erl-tiny writes it for a bare question but, after the RL loop's own worked example, still drops the
backslash ("boxed{4}"), so every RL reward is 0 and the loop skips its training steps, as it is
written to (its importance_sampling loss is checked by test/tinker/sdk.itest.ts).

usage: python cookbook_drive.py <base_url> <model_name> <log_path>
"""

from __future__ import annotations

import json
import sys

import datasets

from tinker_cookbook import model_info
from tinker_cookbook.recipes import rl_loop, sl_loop


def local_datasets(name: str, *args: object, **kwargs: object) -> datasets.DatasetDict:
    if name == "HuggingFaceH4/no_robots":
        # Two-turn conversations, as the RL loop's prompts are (a worked example, then the question).
        words = ["grid", "frozen", "box", "goal", "wall", "agent"]
        ask = " Give the number inside \\boxed{}."
        rows = [{"messages": [{"role": "user", "content": f"How many letters are in '{w}'?{ask}"},
                              {"role": "assistant", "content": "Numbering the letters: "
                               + " ".join(f"{i + 1}) {c}" for i, c in enumerate(w)) + f". That is {len(w)}. \\boxed{{{len(w)}}}"},
                              {"role": "user", "content": f"What is {a} + {b}?{ask}"},
                              {"role": "assistant", "content": f"\\boxed{{{a + b}}}"}]}
                for k in range(30) for a in range(1, 5) for b in range(1, 5) for w in [words[(k + a + b) % len(words)]]]
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    if name == "openai/gsm8k":
        rows = [{"question": f"What is {a} + {b}?", "answer": f"{a} plus {b} is {a + b}.\n#### {a + b}"}
                for a in range(1, 5) for b in range(1, 5)]
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows * 31)})
    raise ValueError(f"no local stand-in for the data set {name!r}")


def main() -> None:
    base_url, model_name, log_path = sys.argv[1:4]
    datasets.load_dataset = local_datasets  # type: ignore[assignment]
    recommended = model_info.get_recommended_renderer_name
    model_info.get_recommended_renderer_name = (  # type: ignore[assignment]
        lambda name: "role_colon" if name == model_name else recommended(name)
    )
    # 480 conversations, batches of 4: 120 supervised steps (a checkpoint at 60), then the final one
    # at batch 120.
    sl_loop.main(sl_loop.Config(base_url=base_url, log_path=log_path, model_name=model_name, batch_size=4,
                                learning_rate=5e-3, max_length=256, lora_rank=32, save_every=60, ttl_seconds=None))
    # 496 questions, batches of 4 (124 batches): the RL loop resumes from the supervised run's final
    # state at its batch 120 and runs batches 120 and 121 (max_steps 122).
    rl_loop.main(rl_loop.Config(base_url=base_url, log_path=log_path, model_name=model_name, batch_size=4,
                                group_size=4, learning_rate=1e-3, lora_rank=32, save_every=0, max_tokens=12,
                                loss_fn="importance_sampling", ttl_seconds=None, max_steps=122))
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    main()
