"""Benchmarks: each measures side by side against a named baseline and writes JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

# The detector the fast one replaced, as it ran: the mtcnn package on photos downscaled to
# detect.max_side, looking for faces down to 20 px (detect.min_face_size before it became 32).
DETECTOR_BEFORE = {"mode": "package", "min_face_size": 20}


def with_detect_mode(settings, mode: str):
    """The same settings with another detector, nothing else changed; ``package`` is the detector
    before as it ran (:data:`DETECTOR_BEFORE`: its own smallest face too), so a benchmark's
    baseline is the code it replaced."""
    detect = replace(settings.detect, **(DETECTOR_BEFORE if mode == DETECTOR_BEFORE["mode"] else {"mode": mode}))
    return replace(settings, detect=detect)


def params_document(settings) -> dict:
    """``settings`` as a params file's sections, every path absolute.

    Relative paths in a params file resolve against its own folder, so a copy outside the
    project root must spell them out (the loaded settings hold them resolved already).
    """
    return {f.name: {key: str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
                     for key, value in asdict(getattr(settings, f.name)).items()}
            for f in fields(settings)}


def write_params(path: Path, settings) -> Path:
    """Write :func:`params_document` as YAML: a ``FACES_PARAMS`` file for a service or a stack."""
    import yaml

    path.write_text(yaml.safe_dump(params_document(settings), sort_keys=False))
    return path


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
