"""Runs tinker-cookbook's two minimal recipes, unchanged, against `erl engine serve --tinker` on erl-tiny
(test/tinker/cookbook.itest.ts): first its supervised loop (recipes/sl_loop.py), then its RL loop
(recipes/rl_loop.py) in the same log directory, so that the RL loop resumes from the supervised loop's
final state through the cookbook's own checkpoint code.

The recipes' code runs as shipped. Two look-ups they make cannot be answered here and are answered
locally instead: their data sets (`datasets.load_dataset` of No Robots and GSM8K, on the Hugging Face
hub, which is not reachable) are small real `datasets.Dataset`s of the same columns, and the renderer
the cookbook recommends for a model (`model_info.get_recommended_renderer_name`, a table of hosted
models that has no erl-tiny) is the cookbook's generic "role_colon".

The supervised data teach the answer format the RL loop rewards (`\\boxed{N}` with N the answer), so
that its groups get rewards that differ and its training step runs.

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
        rows = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                              {"role": "assistant", "content": f"\\boxed{{{a + b}}}"}]}
                for a in range(1, 5) for b in range(1, 5) for _ in range(2)]
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    if name == "openai/gsm8k":
        rows = [{"question": f"What is {a} + {b}?", "answer": f"{a} plus {b} is {a + b}.\n#### {a + b}"}
                for a in range(1, 5) for b in range(1, 5)]
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows * 3)})
    raise ValueError(f"no local stand-in for the data set {name!r}")


def main() -> None:
    base_url, model_name, log_path = sys.argv[1:4]
    datasets.load_dataset = local_datasets  # type: ignore[assignment]
    recommended = model_info.get_recommended_renderer_name
    model_info.get_recommended_renderer_name = (  # type: ignore[assignment]
        lambda name: "role_colon" if name == model_name else recommended(name)
    )
    # 32 conversations, batches of 4: 8 supervised steps, then the final checkpoint at batch 8.
    sl_loop.main(sl_loop.Config(base_url=base_url, log_path=log_path, model_name=model_name, batch_size=4,
                                learning_rate=5e-3, max_length=256, lora_rank=8, save_every=4, ttl_seconds=None))
    # 48 questions, batches of 4 (12 batches): the RL loop resumes from the supervised run's final
    # state at its batch 8 and runs batches 8 and 9 (max_steps 10).
    rl_loop.main(rl_loop.Config(base_url=base_url, log_path=log_path, model_name=model_name, batch_size=4,
                                group_size=4, learning_rate=5e-3, lora_rank=8, save_every=0, max_tokens=12,
                                loss_fn="importance_sampling", ttl_seconds=None, max_steps=10))
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    main()
