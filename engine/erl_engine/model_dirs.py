"""Writing an installed model directory (`erl models install`): file checksums, the provenance file,
and putting a finished temporary directory in place atomically with ordinary permissions."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

PROVENANCE = "provenance.json"


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_provenance(tmp: str, prov: dict[str, Any]) -> None:
    with open(os.path.join(tmp, PROVENANCE), "w", encoding="utf-8") as f:
        json.dump(prov, f, indent=2)
        f.write("\n")


def publish(tmp: str, out: str) -> None:
    """Makes `tmp` (a finished model directory beside `out`) the directory `out`: readable by everyone
    (mkdtemp makes a private one), and swapped in with renames so that `out` is never half written."""
    os.chmod(tmp, 0o755)
    for name in os.listdir(tmp):
        os.chmod(os.path.join(tmp, name), 0o644)
    parent = os.path.dirname(os.path.abspath(out)) or "."
    if os.path.exists(out):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
        os.rename(out, os.path.join(old, "x"))
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
