"""``faces bench ingest``: photos per hour through the face_ingest path, step by step.

Two kinds of photo, each a fresh batch into a fresh work area, identity store and
MLflow store:

* ``lfw``: LFW deep-funneled photos as they are (250x250, one main face);
* ``fullhd``: 1920x1080 photos composed deterministically from LFW faces (3-6 faces of
  140-320 px each on a smooth noisy background, seeded), cached under ``bench/cache``.

Each batch goes through three paths, side by side on the same photos:

* ``workflow_direct``: the face_ingest steps (components/workflow/ingest.py) called one
  after another in this process: plan, validate images, detect, validate faces, embed
  (+ embeddings suite), store, assign, record metrics (MLflow). Models are loaded by a
  warm-up batch first, as in a long-running worker. Its per-step seconds are the
  breakdown (validate, load + detect, embed, store, assign, record).
* ``dag``: ``airflow dags test face_ingest`` in a subprocess (temporary SQLite
  metadata database): the same steps as Airflow tasks (XCom, task-instance state,
  the DAG's mapping), handed to the warm step server (components/workflow/warm.py)
  that a warm-up run of the DAG on the warm-up batch started, as a worker that ran
  a batch before. Its wall time includes the start of Python and Airflow and the
  DAG parse. The share of the wall time spent outside the components (``1 -
  component seconds / wall``) is the orchestration overhead.
* ``dag_cold``: the same with ``FACES_WARM_WORKERS=0``: every step in the task's own
  process, as before the step server (TensorFlow import and model loads inside the
  wall time; under a real executor every task process pays them again).
* baseline ``faces_run``: the original one-process job (components/pipeline/run.py)
  on the same photos, with its clustering and HTML report.

Throughput is photos per hour of wall time on this machine (its cores shared with
whatever else runs: the ``uptime`` load before and after is recorded, and after every
direct run).

Detector before and after (``baseline_detect_mode``, default ``package``): the direct
steps also run with the detector that ``detect.mode`` replaced, the rest of the settings
unchanged, on the same photos in the same run (``workflow_direct_baseline_detect``). On
a shared machine the load drifts within minutes, so the two detectors take turns over
``direct_repeats`` rounds (which one goes first alternates), and each is judged by its
best round; ``detector_speedup`` is that throughput ratio against the issue's goals
(1.5x on LFW photos, 1.8x on full-HD).

``dag=False`` skips the Airflow paths (minutes each under load); the DAG figures of the
result file this run replaces are then kept beside this run's, labelled as from that
run (``dag_from_earlier_run``), never mixed into this run's ratios.

The code before this workflow version cannot run here (one store transaction per
photo, no step server), so its figures are kept from the committed result of an
earlier run (``earlier_run``: another moment, another load; compare with care).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from components.bench import save_result, with_detect_mode
from components.settings import PROJECT_ROOT, Settings

CACHE = PROJECT_ROOT / "bench" / "cache" / "ingest"
LFW = PROJECT_ROOT / "data" / "lfw" / "images_deepfunneled"
FULL_HD = (1920, 1080)
GOALS = {"lfw": 150_000, "fullhd": 15_000}  # photos per hour on this machine's 2 cores (the goals)
THESIS_LOAD = 100_000  # full-HD photos per hour, the thesis's production load
# The issue's goals for the steps' throughput with the new detector over the one before, same run.
DETECTOR_GOALS = {"lfw": 1.5, "fullhd": 1.8}
DAG_KEYS = ("dag", "dag_cold", "orchestration_overhead_ratio", "dag_throughput_over_direct",
            "dag_cold_throughput_over_direct", "goal_met_dag")


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_1min(uptime: str | None) -> float | None:
    """The 1-minute load average of an ``uptime`` line (None when it has none)."""
    found = re.search(r"load averages?:\s*([0-9.]+)", uptime or "")
    return float(found.group(1)) if found else None


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    # Other edits in the working tree are named: the figures are of the files as they were, not of the commit alone.
    return done.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "") if done.returncode == 0 else None


def detector_comparison(baseline_walls: list[float], walls: list[float], photos: int, goal: float, *,
                        baseline_mode: str, mode: str) -> dict:
    """Throughput of the steps with ``mode`` over ``baseline_mode``, from rounds run in turn on the same photos.

    Each detector is taken at its best round: the load of a shared machine only slows a run
    down, so the fastest round is the one least disturbed (each round's ratio is kept too).
    """
    if not walls or len(walls) != len(baseline_walls):
        raise ValueError("one wall time per round for each detector")
    best_old, best_new = min(baseline_walls), min(walls)
    ratio = best_old / best_new  # same photos: the throughput ratio is the inverse of the wall ratio
    return {"baseline_detect_mode": baseline_mode, "detect_mode": mode, "rounds": len(walls),
            "photos_per_hour_baseline_detect": round(photos / best_old * 3600),
            "photos_per_hour": round(photos / best_new * 3600),
            "ratio": round(ratio, 3), "ratio_per_round": [round(old / new, 3) for old, new in zip(baseline_walls, walls)],
            "goal_ratio": goal, "goal_met": ratio >= goal,
            "measure": "best wall time of the rounds per detector; rounds alternate which detector runs first"}


def carried_dag(previous: dict | None, kind: str) -> dict | None:
    """The DAG paths' figures of the result file a run without them replaces, labelled as not this run's."""
    entry = (previous or {}).get("results", {}).get(kind) or {}
    if "dag_from_earlier_run" in entry:  # that run skipped them too: keep the original figures and label
        return entry["dag_from_earlier_run"]
    if "dag" not in entry:
        return None
    params = previous.get("params", {})
    return {"note": "NOT this run: the Airflow paths as measured by the earlier run this file replaced (another "
                    "moment, another load, its own detector); their ratios are to that run's direct path",
            "date": previous.get("date"), "command": previous.get("command"), "commit": previous.get("commit"),
            "detect_mode": params.get("detect.mode", "package (the run predates detect.mode)"),
            "uptime_before": previous.get("machine", {}).get("uptime_before"),
            "uptime_after": previous.get("machine", {}).get("uptime_after"),
            "workflow_direct_photos_per_hour": entry.get("workflow_direct", {}).get("photos_per_hour"),
            **{key: entry[key] for key in DAG_KEYS if key in entry}}


def lfw_paths(count: int, seed: int = 0) -> list[Path]:
    """A seeded sample of LFW photos, at most one per person (many people, not many photos of one)."""
    people = sorted(path for path in LFW.iterdir() if path.is_dir())
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(people), size=min(count, len(people)), replace=False)
    return [sorted(people[i].iterdir())[0] for i in sorted(chosen)]


def lfw_batch(count: int, seed: int = 0) -> Path:
    """``count`` LFW photos copied into their own folder (LFW layout: person/photo.jpg)."""
    folder = CACHE / f"lfw-{count}-seed{seed}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        for path in lfw_paths(count, seed):
            (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.parent.name / path.name)
        (folder / ".complete").touch()
    return folder


def compose_full_hd(faces: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One 1920x1080 RGB photo with the given LFW photos' central faces pasted on a background.

    Each LFW photo's central 150x150 (the funneled face with some hair and neck) is
    scaled to 140-320 px and placed in its own cell of a 4 x 2 grid, jittered, so
    faces never overlap.
    """
    from PIL import Image

    width, height = FULL_HD
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    colour = rng.uniform(60, 200, size=(2, 3)).astype(np.float32)
    mix = (x / width * 0.7 + y / height * 0.3)[..., None]
    background = colour[0] * (1 - mix) + colour[1] * mix + rng.normal(0, 6, size=(height, width, 3))
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    cells = rng.choice(8, size=len(faces), replace=False)
    cell_w, cell_h = width // 4, height // 2
    for face, cell in zip(faces, cells):
        side = int(rng.integers(140, 321))
        crop = Image.fromarray(face[50:200, 50:200]).resize((side, side), Image.Resampling.BILINEAR)
        left = (cell % 4) * cell_w + int(rng.integers(0, cell_w - side + 1))
        top = (cell // 4) * cell_h + int(rng.integers(0, cell_h - side + 1))
        canvas.paste(crop, (left, top))
    return np.asarray(canvas)


def full_hd_batch(count: int, seed: int = 0) -> tuple[Path, int]:
    """``count`` composed full-HD photos (JPEG, quality 90), cached; returns (folder, faces placed)."""
    from PIL import Image

    folder = CACHE / f"fullhd-{count}-seed{seed}"
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        sources = lfw_paths(count * 6, seed + 1)
        used = 0
        for index in range(count):
            k = int(rng.integers(3, 7))
            faces = [np.asarray(Image.open(path).convert("RGB")) for path in sources[used : used + k]]
            used += k
            Image.fromarray(compose_full_hd(faces, rng)).save(folder / f"photo_{index:05d}.jpg", quality=90)
        marker.write_text(str(used))
    return folder, int(marker.read_text() or 0)


@contextmanager
def _environment(**values: str):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _fresh_env(root: Path) -> dict[str, str]:
    """A fresh work area, identity store (SQLite) and MLflow store under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    return {"FACES_WORK_URI": str(root / "work"), "FACES_STORE_URL": f"sqlite:///{root / 'faces.db'}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
            "FACES_QUARANTINE_URI": str(root / "quarantine")}


def _breakdown(metrics: dict, wall: dict) -> dict:
    """The issue's steps from the components' own seconds: validate, detect, embed, assign, store (+ record)."""
    seconds = metrics["seconds"]
    steps = {
        "validate": seconds.get("validate", 0.0),
        "detect": seconds.get("load", 0.0) + seconds.get("detect", 0.0),
        "embed": seconds.get("embed", 0.0),
        "assign": seconds.get("assign", 0.0),
        "store": seconds.get("store", 0.0),
        "record": wall.get("record_metrics", 0.0),
    }
    return {key: round(value, 3) for key, value in steps.items()}


def run_direct(folder: Path | str, root: Path, settings: Settings, shard_size: int | None, warmup: Path | str, *,
               env: dict[str, str] | None = None, folder_labels: bool = True) -> dict:
    """The face_ingest steps in this process, after a warm-up batch that loads every model.

    ``env``: the work area, store and MLflow to use instead of fresh local ones under
    ``root`` (e.g. the local stack's S3 work area and MLflow server, as its workers have
    them); ``folder`` and ``warmup`` may then be ``s3://`` batches too.
    """
    from components.workflow.ingest import run_ingest

    with _environment(**(env if env is not None else _fresh_env(root))):
        started = time.perf_counter()
        run_ingest(str(warmup), batch_id="warmup", shard_size=shard_size, settings=settings)
        warm_seconds = time.perf_counter() - started
        started = time.perf_counter()
        metrics = run_ingest(str(folder), batch_id="bench", shard_size=shard_size, folder_labels=folder_labels,
                             settings=settings)
        wall = time.perf_counter() - started
    steps = _breakdown(metrics, metrics["wall_seconds"])
    components = sum(steps.values())
    return {"wall_s": round(wall, 3), "photos": metrics["photos"], "faces": metrics["faces"],
            "usable_faces": metrics["usable_faces"], "shards": metrics["shards"],
            "photos_per_hour": round(metrics["photos"] / wall * 3600), "steps_s": steps,
            "step_share": {key: round(value / wall, 3) for key, value in steps.items()},
            "outside_steps_s": round(wall - components, 3), "warmup_s (models, MLflow store, GE)": round(warm_seconds, 1),
            "wall_by_call_s": metrics["wall_seconds"]}


def run_dag(folder: Path, root: Path, shard_size: int, timeout_s: float, *, warm_workers: bool = True,
            warmup: Path | None = None) -> dict:
    """``airflow dags test face_ingest`` on the batch; wall time against the components' own seconds.

    With ``warm_workers`` a first run on ``warmup`` starts the step server and loads its
    models (timed apart); the measured run then finds them loaded.
    """
    airflow = str(Path(sys.executable).parent / "airflow")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW__", "FACES_", "MLFLOW_"))}
    env.update(_fresh_env(root))
    if os.environ.get("FACES_PARAMS"):  # the same parameters as the direct path
        env["FACES_PARAMS"] = str(Path(os.environ["FACES_PARAMS"]).resolve())
    env.update({"AIRFLOW_HOME": str(root / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "TF_CPP_MIN_LOG_LEVEL": "3",
                "FACES_WARM_WORKERS": "1" if warm_workers else "0", "FACES_WARM_DIR": str(root / "warm")})
    (root / "airflow").mkdir(parents=True, exist_ok=True)
    subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, check=True, timeout=300)

    def dags_test(batch: Path, batch_id: str, date: str) -> float:
        conf = json.dumps({"batch": str(batch), "batch_id": batch_id, "shard_size": shard_size, "folder_labels": True})
        started = time.perf_counter()
        done = subprocess.run([airflow, "dags", "test", "face_ingest", date, "-c", conf], env=env,
                              capture_output=True, text=True, timeout=timeout_s)
        wall = time.perf_counter() - started
        if done.returncode != 0 or "state=success" not in done.stdout + done.stderr:
            output = done.stdout + done.stderr
            errors = [line for line in output.splitlines() if "exc_value" in line or "Error" in line or "failed for" in line]
            raise RuntimeError("airflow dags test failed:\n" + "\n".join(errors[:20])[:4000] + "\n" + output[-2000:])
        return wall

    from components.workflow import warm

    try:
        # Both runs on or after the DAG's start_date (2026-01-01): an earlier run would run no task.
        warmup_s = dags_test(warmup, "warmup", "2026-01-01T00:00:00+00:00") if warm_workers and warmup else None
        wall = dags_test(folder, "bench", "2026-01-02T00:00:00+00:00")
    finally:
        if (root / "warm").is_dir():
            warm.stop(root / "warm")
    metrics = json.loads((root / "work" / "batches" / "bench" / "metrics.json").read_text())
    steps = _breakdown(metrics, {})
    components = sum(steps.values())
    tasks = 4 + 3 * metrics["shards"]  # plan, validate_images, assign, record_metrics + per shard detect, validate_faces, embed
    return {"wall_s": round(wall, 3), "photos": metrics["photos"], "shards": metrics["shards"],
            "photos_per_hour": round(metrics["photos"] / wall * 3600), "steps_s": steps,
            "component_s": round(components, 3), "outside_components_s": round(wall - components, 3),
            "overhead_share": round(1 - components / wall, 3),
            "task_instances": tasks, "outside_components_per_task_s": round((wall - components) / tasks, 3),
            "warm_workers": warm_workers,
            **({"warmup_run_s (step server start, models, MLflow store, GE)": round(warmup_s, 1)} if warmup_s else {}),
            "note": ("one `airflow dags test` process (Python + Airflow start and the DAG parse inside the wall time); "
                     "every step handed to the warm step server, started and warmed by a run on the warm-up batch"
                     if warm_workers else
                     "one `airflow dags test` process, every step in it (FACES_WARM_WORKERS=0): Python + Airflow start, "
                     "DAG parse, TensorFlow import and model loads inside the wall time")}


def run_baseline(folder: Path, root: Path, settings: Settings) -> dict:
    """The original ``faces run`` job on the same photos (models warmed up on the warm-up batch by the caller)."""
    from components.pipeline.run import folder_photos, run

    photos, _ = folder_photos(folder, folder_labels=True)
    started = time.perf_counter()
    summary = run(photos, root / "out", settings, progress=False)
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 3), "photos": len(photos), "photos_per_hour": round(len(photos) / wall * 3600),
            "step_seconds": summary["step_seconds"], "faces": summary["this_run"]["faces"]}


def hardware_estimate(result: dict) -> dict:
    """Cores (of this machine's kind) for the thesis's 100k full-HD photos/hour, from the measured breakdown.

    Detection, validation and embedding are per shard and spread over workers (the DAG's
    mapped tasks); storing and assigning run once per batch against one database, so
    they are the serial part.
    """
    direct = result["workflow_direct"]
    photos = direct["photos"]
    cores_here = 2
    steps = direct["steps_s"]
    parallel = (steps["validate"] + steps["detect"] + steps["embed"]) * cores_here / photos  # core-seconds per photo
    serial = (steps["store"] + steps["assign"]) / photos  # seconds per photo, one writer (record: once per batch)
    per_second = THESIS_LOAD / 3600
    cores = per_second * parallel
    serial_load = per_second * serial
    return {
        "target_photos_per_hour": THESIS_LOAD,
        "core_seconds_per_photo (validate+detect+embed, measured here)": round(parallel, 4),
        "serial_seconds_per_photo (store+assign, one writer)": round(serial, 5),
        "cores_needed_at_this_speed": round(cores, 1),
        "serial_share_of_one_writer": round(serial_load, 3),
        "reading": (f"{cores:.0f} cores of this machine's kind (e.g. {int(np.ceil(cores / 16))} workers x 16 cores) "
                    f"with shards spread by the Celery executor; the single store writer is then busy "
                    f"{serial_load:.0%} of the time" + (" (needs batching of store writes or several stores)"
                                                        if serial_load > 0.7 else "")),
        "assumption": "linear scaling over workers (shards are independent); the machine was shared, so "
                      "per-photo costs are upper bounds",
    }


def run_benchmark(settings: Settings, out: Path, *, lfw_photos: int = 256, fullhd_photos: int = 32,
                  shard_size: int | None = None, dag: bool = True, baseline: bool = True, dag_timeout_s: float = 1800,
                  baseline_detect_mode: str | None = "package", direct_repeats: int = 1,
                  command: str = "faces bench ingest") -> dict:
    """Measure every path for both kinds of photo and write the JSON to ``out``; ``shard_size``
    defaults to ``workflow.shard_size``, what a run triggered with the form's defaults uses."""
    from components.workflow import __version__ as workflow_version

    shard_size = shard_size or settings.workflow.shard_size

    try:
        previous = json.loads(Path(out).read_text())
    except (OSError, ValueError):
        previous = None
    if baseline_detect_mode == settings.detect.mode:
        baseline_detect_mode = None  # the same detector twice measures nothing
    repeats = max(1, direct_repeats)
    load_before = _uptime()
    began = time.perf_counter()
    warmup = lfw_batch(4, seed=99)
    batches = {"lfw": (lfw_batch(lfw_photos), lfw_photos * 1), "fullhd": full_hd_batch(fullhd_photos)}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="faces-bench-ingest-") as tmp:
        tmp = Path(tmp)
        for kind, (folder, faces_placed) in batches.items():
            entry: dict = {"photos": len([p for p in folder.rglob("*.jpg")]), "folder": str(folder.relative_to(PROJECT_ROOT)),
                           "faces_placed": faces_placed if kind == "fullhd" else None,
                           "goal_photos_per_hour": GOALS[kind]}
            modes = [settings.detect.mode] + ([baseline_detect_mode] if baseline_detect_mode else [])
            runs: dict[str, list[dict]] = {mode: [] for mode in modes}
            uptimes = []
            for round_ in range(repeats):
                # The detector before goes first in even rounds, second in odd ones: a drift in load
                # over the run then falls on both.
                for mode in (modes[::-1] if round_ % 2 == 0 else modes):
                    runs[mode].append(run_direct(folder, tmp / kind / f"direct-{mode}-{round_}",
                                                 with_detect_mode(settings, mode), shard_size, warmup))
                    runs[mode][-1]["detect_mode"] = mode
                    uptimes.append(_uptime())
            entry["uptime_after_direct_runs"] = uptimes
            best = {mode: min(done, key=lambda run: run["wall_s"]) for mode, done in runs.items()}
            entry["workflow_direct"] = {**best[settings.detect.mode],
                                        "wall_s_per_round": [run["wall_s"] for run in runs[settings.detect.mode]]}
            if baseline_detect_mode:
                entry["workflow_direct_baseline_detect"] = {
                    **best[baseline_detect_mode], "wall_s_per_round": [run["wall_s"] for run in runs[baseline_detect_mode]]}
                entry["detector_speedup"] = detector_comparison(
                    [run["wall_s"] for run in runs[baseline_detect_mode]], [run["wall_s"] for run in runs[settings.detect.mode]],
                    entry["workflow_direct"]["photos"], DETECTOR_GOALS[kind],
                    baseline_mode=baseline_detect_mode, mode=settings.detect.mode)
            if baseline:
                entry["baseline_faces_run"] = run_baseline(folder, tmp / kind / "baseline", settings)
            if dag:
                direct_wall = entry["workflow_direct"]["wall_s"]
                entry["dag"] = run_dag(folder, tmp / kind / "dag", shard_size, dag_timeout_s, warmup=warmup)
                entry["dag_cold"] = run_dag(folder, tmp / kind / "dag-cold", shard_size, dag_timeout_s,
                                            warm_workers=False)
                entry["orchestration_overhead_ratio"] = round(entry["dag"]["wall_s"] / direct_wall, 3)
                # The measure: the Airflow path's throughput as a share of the direct path's.
                entry["dag_throughput_over_direct"] = round(direct_wall / entry["dag"]["wall_s"], 3)
                entry["dag_cold_throughput_over_direct"] = round(direct_wall / entry["dag_cold"]["wall_s"], 3)
            best = entry["workflow_direct"]["photos_per_hour"]
            entry["goal_met_direct"] = best >= GOALS[kind]
            if dag:
                entry["goal_met_dag"] = entry["dag"]["photos_per_hour"] >= GOALS[kind]
            elif carried_dag(previous, kind):
                entry["dag_from_earlier_run"] = carried_dag(previous, kind)
            results[kind] = entry
    summary = {
        "benchmark": "ingest",
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "uptime_before": load_before, "uptime_after": _uptime(),
                    "note": "shared machine (other jobs running: see the load averages); absolute figures are noisy "
                            "and pessimistic"},
        "versions": {"workflow": workflow_version},
        "commit": _commit(),
        "params_file": os.environ.get("FACES_PARAMS") or "params.yaml",
        "params": {"shard_size": shard_size, "detect.mode": settings.detect.mode,
                   "baseline_detect_mode": baseline_detect_mode, "direct_repeats": repeats,
                   "detect.batch_size": settings.detect.batch_size,
                   "validate.face_landmark_tolerance": settings.validate.face_landmark_tolerance,
                   "detect.max_side": settings.detect.max_side, "embed.batch_size": settings.embed.batch_size},
        "baseline": "faces run (components/pipeline/run.py): the one-process job on the same photos",
        "results": results,
        "thesis_load_estimate": hardware_estimate(results["fullhd"]),
        "earlier_run": earlier_run(out, workflow_version),
        "seconds": round(time.perf_counter() - began, 1),
    }
    save_result(out, summary)
    return summary


def earlier_run(out: Path, workflow_version: str) -> dict | None:
    """The figures of the previous workflow version, from the result file this run replaces.

    That code cannot run beside this one (one store transaction per photo, steps in
    the task's process), so its last committed result is the baseline: photos per hour
    and wall seconds per path, with its date and load.
    """
    try:
        previous = json.loads(Path(out).read_text())
    except (OSError, ValueError):
        return None
    if previous.get("versions", {}).get("workflow") == workflow_version:
        return previous.get("earlier_run")  # a re-run of this version: keep the older baseline
    paths = ("workflow_direct", "dag", "baseline_faces_run")
    return {
        "note": "an earlier run of the previous workflow version (not this run: another moment, another load)",
        "workflow": previous.get("versions", {}).get("workflow"), "date": previous.get("date"),
        "uptime_before": previous.get("machine", {}).get("uptime_before"),
        "uptime_after": previous.get("machine", {}).get("uptime_after"),
        "results": {kind: {"photos": entry.get("photos"),
                           **{path: {key: entry[path].get(key) for key in ("photos_per_hour", "wall_s", "steps_s")}
                              for path in paths if path in entry}}
                    for kind, entry in previous.get("results", {}).items()},
    }


def table(summary: dict) -> list[dict]:
    """The README rows: one per kind of photo and path."""
    rows = []
    for kind, entry in summary["results"].items():
        carried = entry.get("dag_from_earlier_run") or {}
        for path in ("workflow_direct_baseline_detect", "workflow_direct", "dag", "dag_cold", "baseline_faces_run"):
            source, earlier = (entry, False) if path in entry else (carried, True)
            if path not in source:
                continue
            row = {"photos": kind, "path": path, "n": source[path]["photos"],
                   "photos_per_hour": source[path]["photos_per_hour"], "goal": entry["goal_photos_per_hour"],
                   "steps_s": source[path].get("steps_s") or source[path].get("step_seconds")}
            if "detect_mode" in source[path]:
                row["detect_mode"] = source[path]["detect_mode"]
            if earlier:
                row["from_earlier_run"] = carried.get("date")
            rows.append(row)
        if "detector_speedup" in entry:
            speedup = entry["detector_speedup"]
            rows.append({"photos": kind, "path": "detector_speedup", "ratio": speedup["ratio"],
                         "goal_ratio": speedup["goal_ratio"], "goal_met": speedup["goal_met"]})
    return rows
