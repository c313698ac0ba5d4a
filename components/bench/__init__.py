"""Benchmarks: each measures side by side against a named baseline and writes JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def save_result(out: str | os.PathLike[str], result: Any) -> Path:
    """Write a benchmark's result as JSON under a temporary name, then rename it into place.

    A benchmark killed midway leaves the previous ``bench/results`` file whole.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    return out
