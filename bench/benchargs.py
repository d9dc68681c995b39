"""Argument checks shared by the Python benchmarks: argparse types that refuse a bad value with one
line naming the flag and the value (argparse itself refuses unknown flags)."""

from __future__ import annotations

import argparse
import os
from typing import Callable


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer from lo to hi."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi}, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi}, got {v}")
        return v

    return parse


def model_dir(text: str) -> str:
    """An argparse type: a folder holding a config.json."""
    if not os.path.isfile(os.path.join(text, "config.json")):
        raise argparse.ArgumentTypeError(f"{text}: not a model directory (no config.json)")
    return text


def out_file(text: str) -> str:
    """An argparse type: a file to write, in a folder that exists (it is never created here)."""
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{text}: the folder {folder} does not exist; create it first")
    return text
