"""The run report: a JSON summary and a static HTML gallery, one section per identity."""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.identities import IdentityStore

MAX_THUMBNAILS = 60  # per identity in the gallery; the JSON lists every face
MAX_LISTED = 200  # rejected files, face-less photos, ... listed in full up to this


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def run_params(settings, sections=("detect", "cluster")) -> dict:
    """The settings a run records, section by section (``faces run``'s report, the ingest DAG's MLflow run).

    ``detect`` holds the settings that trade recall for speed (``mode``, ``min_face_fraction``,
    ``scale_factor``, ``stage_thresholds``, ...): two runs compare only knowing them.
    """
    return _jsonable({name: asdict(getattr(settings, name)) for name in sections})


def _model_line(summary: dict) -> str:
    """Which model embedded the faces, from where, with which thresholds (and whether the store moved to it)."""
    model = summary.get("model") or {}
    version = model.get("model_version") or summary.get("model_version") or "-"
    if not model:
        return str(version)
    origin = f"registry v{model['registry_version']}" if model.get("registry_version") else model.get("source", "local")
    thresholds = ", ".join(f"{name} {value:.3f}" for name, value in (model.get("thresholds") or {}).items())
    moved = " · the store was re-embedded with it first" if (model.get("reembedded") or {}).get("changed") else ""
    return f"{version} ({origin}; thresholds {thresholds}){moved}"


def build_summary(*, store: IdentityStore, log, clustering: dict | None, changed: bool, versions: dict, model_version: str | None,
                  input_name: str, settings, seconds: float, machine: str) -> dict:
    """Assemble the JSON summary of a run (this run's ingest + the store's state)."""
    counts = store.counts()
    identities = store.identities()
    in_identities = sum(identity["size"] for identity in identities)
    return {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": input_name,
        "machine": machine,
        "seconds": round(seconds, 2),
        "step_seconds": {key: round(value, 2) for key, value in log.seconds.items()},
        "versions": versions,
        "model_version": model_version,
        "changed": changed,
        "this_run": {
            "photos_seen": log.seen,
            "photos_new": log.new,
            "photos_already_stored": log.already_stored,
            "duplicates": log.duplicates[:MAX_LISTED],
            "n_duplicates": len(log.duplicates),
            "rejected_files": log.rejected[:MAX_LISTED],
            "n_rejected_files": len(log.rejected),
            "photos_without_faces": log.without_faces[:MAX_LISTED],
            "n_photos_without_faces": len(log.without_faces),
            "faces": log.faces,
            "usable_faces": log.usable_faces,
            "rejected_faces_by_reason": dict(log.face_failures),
        },
        "store": counts,
        "identities": {
            "count": len(identities),
            "faces_in_identities": in_identities,
            "unknown_pool": counts["usable_faces"] - in_identities,
            "largest": identities[0]["size"] if identities else 0,
        },
        "clustering": clustering,
        "params": run_params(settings),
    }


def write_report(summary: dict, store: IdentityStore, out_dir: Path) -> None:
    """Write ``report.json`` and ``report.html`` atomically.

    When nothing changed since the last run, the previous clustering section is
    carried over so the report still shows the identities' quality.
    """
    out_dir = Path(out_dir)
    previous = out_dir / "report.json"
    if summary["clustering"] is None and previous.exists():
        summary["clustering"] = json.loads(previous.read_text()).get("clustering")
    _atomic_write(out_dir / "report.json", json.dumps(summary, indent=2, sort_keys=False))
    _atomic_write(out_dir / "report.html", render_html(summary, store.identities()))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value else "0"
    return html.escape(str(value))


def render_html(summary: dict, identities: list[dict]) -> str:
    """A self-contained page: headline figures, a gallery per identity, rejects."""
    esc = html.escape
    run = summary["this_run"]
    clustering = summary.get("clustering") or {}
    scored = clustering.get("against_folder_labels") or {}
    figures = [
        ("photos in store", summary["store"]["images"]),
        ("faces", summary["store"]["faces"]),
        ("usable faces", summary["store"]["usable_faces"]),
        ("identities", summary["identities"]["count"]),
        ("unknown pool", summary["identities"]["unknown_pool"]),
        ("silhouette", clustering.get("silhouette")),
        ("pairwise F", scored.get("pairwise_f1")),
        ("BCubed F", scored.get("bcubed_f1")),
    ]
    cards = "".join(
        f'<div class="card"><div class="v">{_fmt(value) if value is not None else "-"}</div><div class="k">{esc(key)}</div></div>'
        for key, value in figures
    )
    sections = []
    for identity in identities:
        labels = Counter(face["label"] for face in identity["faces"] if face["label"])
        title = f"Identity {identity['id']}"
        if identity["name"]:
            title += f" · {esc(identity['name'])}"
        if labels:
            name, count = labels.most_common(1)[0]
            title += f' <span class="truth">mostly {esc(name)} ({count}/{sum(labels.values())} labelled)</span>'
        thumbs = "".join(
            f'<img src="{esc(face["crop"])}" title="{esc(face["photo"])} · similarity {face["similarity"]}"'
            f'{" class=medoid" if face["face_id"] == identity["medoid_face_id"] else ""} loading="lazy">'
            for face in identity["faces"][:MAX_THUMBNAILS]
        )
        more = len(identity["faces"]) - MAX_THUMBNAILS
        sections.append(
            f'<section><h2>{title} <small>{identity["size"]} faces</small></h2><div class="g">{thumbs}</div>'
            + (f"<p>... and {more} more</p>" if more > 0 else "")
            + "</section>"
        )
    rejected_rows = "".join(
        f"<tr><td>{esc(item['path'])}</td><td>{esc(item['code'])}</td><td>{esc(item['reason'])}</td></tr>"
        for item in run["rejected_files"]
    )
    failures = ", ".join(f"{esc(k)}: {v}" for k, v in run["rejected_faces_by_reason"].items()) or "none"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>faces: identities</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
.cards {{ display: flex; flex-wrap: wrap; gap: .75rem; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: .5rem 1rem; min-width: 7rem; }}
.card .v {{ font-size: 1.4rem; font-weight: 600; }} .card .k {{ color: #666; font-size: .85rem; }}
section {{ margin: 1.5rem 0; }} h2 {{ font-size: 1.05rem; }} small, .truth {{ color: #777; font-weight: normal; }}
.g img {{ width: 75px; height: 75px; margin: 2px; border-radius: 3px; }}
.g img.medoid {{ outline: 3px solid #2a7; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: .25rem .5rem; font-size: .85rem; }}
</style></head><body>
<h1>Identities</h1>
<p>Input: {esc(summary['input'])} · finished {esc(summary['finished_at'])} · {summary['seconds']} s ·
model {esc(_model_line(summary))} · this run: {run['photos_new']} new photos,
{run['photos_already_stored']} already stored, {run['n_rejected_files']} rejected files.</p>
<div class="cards">{cards}</div>
<p>Faces rejected by the quality gates: {failures}. The medoid of each identity has a green frame.</p>
{''.join(sections) or '<p>No identities yet.</p>'}
<h2>Rejected files (this run)</h2>
<table><tr><th>file</th><th>code</th><th>reason</th></tr>{rejected_rows or '<tr><td colspan=3>none</td></tr>'}</table>
</body></html>
"""
