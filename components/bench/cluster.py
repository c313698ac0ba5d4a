"""``faces bench cluster``: every clustering algorithm on LFW (quality), on synthetic data (scale), streamed.

Three parts, each runnable alone (``--part``); their results are merged into one JSON
(``bench/results/cluster.json``) with the hardware, command and date of each part.

Quality (LFW, README.md "Evaluation protocols"). Main-face embeddings of all 13,233 photos (cached by
pipeline version, shared with ``faces bench lfw-verify``). Parameters are never chosen
on the labels they are scored on: every algorithm's ``CALIBRATION_GRID`` is searched
on the people of ``people.txt`` folds 1-5, choosing by **BCubed F**, and that setting
is scored on the people of folds 6-10 (disjoint people) and on all of LFW. BCubed,
not pairwise F, chooses because pairwise F counts pairs of photos: George W. Bush's
530 photos make 140,185 of LFW's 242,014 same-person pairs, so pairwise F mostly
measures how one man is clustered; BCubed averages over photos. The shipped defaults
(``__init__``, or ``params.yaml`` for Chinese Whispers: what a user gets out of the box)
are scored on all of LFW too. Beside them, in the same run: dlib's reference pipeline
(its own encodings, ``dlib.chinese_whispers_clustering`` at its example threshold 0.5
and calibrated the same way) and a published figure, quoted, not measured.

Scale. Synthetic embeddings with LFW's identity sizes and intra-/inter-identity
cosine statistics (:mod:`components.bench.synthetic`), at the ``--sizes`` asked (plus
a quarter and a half of the smallest, so every algorithm gets a growth exponent:
the slope of log time against log N). Algorithms not in ``SCALABLE`` run only up to
``QUADRATIC_MAX_N`` faces and are reported as skipped beyond.

Stream. LFW in random order, in 20 batches, through the identity life cycle
(:func:`components.identities.stream.simulate_stream`), beside one-shot clustering of
everything with the same policy.

Every timed clustering runs in its own spawned process (:mod:`components.bench.memory`):
time is the ``fit`` alone, peak memory is that process's resident high-water mark
(interpreter, libraries and the data included; ``baseline_rss_mb`` is the figure just
before ``fit``), with a timeout and a memory cap recorded honestly when they hit.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from components.bench import save_result
from components.bench.memory import peak_rss_mb, run_isolated
from components.datasets.lfw import LFW_ROOT_DEFAULT, list_identities, read_people_folds
from components.settings import PROJECT_ROOT, Settings

#: Algorithms outside ``SCALABLE`` run only up to this many synthetic faces.
QUADRATIC_MAX_N = 10_000
#: The dlib reference (all pairs, N^2) runs only up to this many synthetic faces.
DLIB_MAX_N = 10_000
#: dlib's example (examples/face_clustering.py) clusters at Euclidean distance 0.5.
DLIB_DEFAULT_THRESHOLD = 0.5
DLIB_GRID = tuple(np.round(np.arange(0.30, 0.6251, 0.025), 3).tolist())
#: Runs faster than this are repeated REPEATS times in all and the median time is quoted.
REPEAT_BELOW_S = 30.0
REPEATS = 3
#: Kill a run that goes above this resident size (the machine has 24 GiB, shared).
MEMORY_CAP_MB = 12_000
#: Assignment thresholds tried in the stream part as a sensitivity check, besides the model's
#: own verification and clustering thresholds (see :func:`stream_assign_diagnostic`).
STREAM_ASSIGN_DIAGNOSTIC = (0.93, 0.96)
GOALS = {
    "quality": {"split": "held_out", "pairwise_f1": 0.97, "bcubed_f1": 0.94},
    "scale": {"n": 1_000_000, "seconds": 600.0, "peak_rss_mb": 8192.0, "cores": 2},
}
PUBLISHED_ANCHOR = {
    "algorithm": "approximate rank-order (published)",
    "setting": "published, not measured",
    "data": "LFW, 13,233 images, 5,749 people",
    "pairwise_f1": 0.87,
    "source": "C. Otto, D. Wang, A. K. Jain, 'Clustering Millions of Faces by Identity', IEEE TPAMI 40(2), "
              "2017/2018 (arXiv:1604.00989); their embedder, not ours",
}
DLIB_NAME = "dlib"

METRIC_KEYS = ("pairwise_precision", "pairwise_recall", "pairwise_f1", "bcubed_precision", "bcubed_recall",
               "bcubed_f1", "nmi", "ari", "accuracy", "n_clusters", "singleton_share", "silhouette")


def timeout_for(n: int) -> float:
    """Per-run wall-clock limit: 10 minutes up to 200k faces, 20 minutes beyond."""
    return 600.0 if n <= 200_000 else 1200.0


# -- algorithms ---------------------------------------------------------------------------------


def _fallback_grid() -> dict[str, list]:
    return {"threshold": [round(t, 3) for t in np.arange(0.88, 0.9601, 0.005)]}


def algorithm_registry() -> tuple[dict[str, type], set[str], dict[str, dict[str, list]], bool]:
    """(ALGORITHMS, SCALABLE, CALIBRATION_GRID, registry found) from :mod:`components.cluster.registry`.

    Without the registry: Chinese Whispers alone, with the threshold grid of
    ``faces bench cluster-threshold``.
    """
    try:
        from components.cluster import registry
    except ImportError:
        from components.cluster import ChineseWhispers

        name = "chinese_whispers"
        return {name: ChineseWhispers}, {name}, {name: _fallback_grid()}, False
    return dict(registry.ALGORITHMS), set(registry.SCALABLE), dict(registry.CALIBRATION_GRID), True


def select(names: list[str], wanted: str | None) -> list[str]:
    """The algorithms ``--algorithms`` asks for (all when None); unknown names are an error."""
    if not wanted:
        return list(names)
    chosen = [w.strip() for w in wanted.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in names and w != DLIB_NAME]
    if unknown:
        raise SystemExit(f"unknown algorithm(s) {unknown}; known: {sorted(names) + [DLIB_NAME]}")
    return [w for w in chosen if w != DLIB_NAME]


def wants_dlib(wanted: str | None) -> bool:
    return not wanted or DLIB_NAME in [w.strip() for w in wanted.split(",")]


def init_defaults(cls: type) -> dict[str, Any]:
    """The keyword defaults of ``cls.__init__``."""
    return {
        p.name: p.default
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def takes_cosine_threshold(cls: type) -> bool:
    """Whether ``cls`` takes the embedder's cosine ``threshold``: a ``threshold`` without a number as default.

    The calibrated threshold belongs to the model, so the estimators that use it leave it
    required (Chinese Whispers, Leiden, Infomap) or None (k-means and GMM, for ``n_clusters="auto"``);
    a numeric default (rank-order's distance) is some other threshold.
    """
    try:
        parameter = inspect.signature(cls.__init__).parameters.get("threshold")
    except (TypeError, ValueError):
        return False
    return parameter is not None and (parameter.default is inspect.Parameter.empty or parameter.default is None)


def shipped_defaults(cls: type, settings: Settings) -> dict[str, Any]:
    """What a user gets out of the box: ``__init__`` defaults, the calibrated cosine threshold of
    ``params.yaml`` (``cluster.threshold``) where the estimator takes one, and ``params.yaml``'s
    other Chinese Whispers settings."""
    from components.cluster import ChineseWhispers

    params = init_defaults(cls)
    if takes_cosine_threshold(cls):
        params["threshold"] = settings.cluster.threshold
    if isinstance(cls, type) and issubclass(cls, ChineseWhispers):
        c = settings.cluster
        shipped = {"threshold": c.threshold, "knn": c.knn, "knn_above": c.knn_above, "iterations": c.iterations,
                   "seed": settings.base.seed}
        params.update({k: v for k, v in shipped.items() if k in params})
    return params


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of a parameter grid, in grid order."""
    if not grid:
        return [{}]
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(list(grid[k]) for k in keys))]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


# -- scoring ------------------------------------------------------------------------------------


def as_labels(pred) -> np.ndarray:
    """Cluster labels with noise (negative labels, e.g. DBSCAN's -1) turned into singletons."""
    labels = np.asarray(pred).astype(np.int64).ravel()
    noise = labels < 0
    if noise.any():
        labels = labels.copy()
        labels[noise] = labels.max(initial=-1) + 1 + np.arange(int(noise.sum()))
    return labels


def _accuracy(true, pred) -> float | None:
    try:
        from components.report.metrics import clustering_accuracy
    except ImportError:
        return None
    return round(float(clustering_accuracy(true, pred)), 4)


def score(pred, true, embeddings: np.ndarray | None = None) -> dict[str, Any]:
    """Every clustering figure of the report for one labelling (silhouette when embeddings are given)."""
    from components.report.metrics import clustering_summary

    labels = as_labels(pred)
    out = clustering_summary(labels, true=true, embeddings=embeddings)
    out["accuracy"] = _accuracy(true, labels)
    out["true_identities"] = int(np.unique(true).size)
    return out


def light_score(pred, true) -> dict[str, Any]:
    """Pairwise and BCubed F and cluster counts only: O(N log N), fine at a million faces."""
    from components.report.metrics import bcubed_prf, pairwise_prf

    labels = as_labels(pred)
    return {"pairwise_f1": round(pairwise_prf(true, labels)[2], 4), "bcubed_f1": round(bcubed_prf(true, labels)[2], 4),
            "n_clusters": int(np.unique(labels).size), "true_identities": int(np.unique(true).size)}


def calibrate(cls: type, grid: dict[str, list], X: np.ndarray, true: np.ndarray,
              base: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grid-search ``cls`` on labelled faces, choosing by BCubed F (first of equals).

    Args:
        cls: estimator class (``fit_predict(X) -> labels``).
        grid: ``{param: [values]}``; every combination is tried.
        X: embeddings of the calibration faces.
        true: their identities.
        base: the other parameters (default: the shipped defaults).

    Returns:
        (chosen grid values, curve): the curve holds one row per combination with its
        scores (or its ``error``), the chosen values are those of the best BCubed F.
    """
    base = dict(base or {})
    curve = []
    for point in grid_points(grid):
        began = time.perf_counter()
        try:
            labels = as_labels(cls(**{**base, **point}).fit_predict(X))
        except Exception as error:  # noqa: BLE001 - one bad grid point must not sink the benchmark
            curve.append({"params": point, "error": f"{type(error).__name__}: {error}"})
            continue
        row = {"params": point, **score(labels, true), "seconds": round(time.perf_counter() - began, 3)}
        curve.append(row)
    scored = [row for row in curve if "error" not in row]
    if not scored:
        raise RuntimeError(f"{getattr(cls, '__name__', cls)}: every grid point failed: {curve}")
    best = max(scored, key=lambda row: row["bcubed_f1"])  # max keeps the first of equals
    return dict(best["params"]), curve


def grid_edges(grid: dict[str, list], chosen: dict[str, Any]) -> list[str]:
    """Parameters whose chosen value is the smallest or largest tried: the optimum may lie outside the grid."""
    edges = []
    for key, values in grid.items():
        try:
            ordered = sorted(values)
        except TypeError:
            continue
        if len(ordered) > 1 and key in chosen and chosen[key] in (ordered[0], ordered[-1]):
            edges.append(key)
    return edges


def growth_exponent(sizes, seconds) -> float | None:
    """Slope of log(time) against log(N): ~1 for linear, ~2 for all-pairs. None with < 2 sizes."""
    points = [(float(n), float(t)) for n, t in zip(sizes, seconds) if t is not None and t > 0 and n > 0]
    if len({n for n, _ in points}) < 2:
        return None
    logn, logt = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return round(float(np.polyfit(logn, logt, 1)[0]), 3)


# -- one measured run in a child process --------------------------------------------------------


def fit_job(spec: dict) -> dict:
    """Child-process entry: load the data, cluster it once, save the labels. Only the clustering is timed."""
    X = np.load(spec["data"])
    if spec["kind"] == "dlib":
        import dlib

        descriptors = [dlib.vector(row) for row in X.astype(np.float64).tolist()]
        baseline = peak_rss_mb()
        began = time.perf_counter()
        labels = np.asarray(dlib.chinese_whispers_clustering(descriptors, float(spec["threshold"])), np.int64)
    else:
        algorithms, *_ = algorithm_registry()
        estimator = algorithms[spec["algorithm"]](**spec["params"])
        baseline = peak_rss_mb()
        began = time.perf_counter()
        labels = estimator.fit_predict(X)
    seconds = time.perf_counter() - began
    np.save(spec["labels_out"], np.asarray(labels))
    return {"seconds": round(seconds, 3), "baseline_rss_mb": round(baseline, 1)}


class Runner:
    """Runs measured clusterings in child processes over data saved in a scratch folder."""

    def __init__(self, workdir: Path, log=None):
        self.workdir = Path(workdir)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self._count = 0

    def save(self, name: str, X: np.ndarray) -> Path:
        path = self.workdir / f"{name}.npy"
        np.save(path, X)
        return path

    def run(self, data: Path, timeout_s: float, label: str, **job) -> tuple[np.ndarray | None, dict]:
        self._count += 1
        labels_out = self.workdir / f"labels_{self._count}.npy"
        spec = {"data": str(data), "labels_out": str(labels_out), **job}
        # Other jobs on a shared machine slow a run down; the load just before it says how busy it was.
        load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        record = run_isolated(fit_job, spec, timeout_s=timeout_s, memory_cap_mb=MEMORY_CAP_MB)
        labels = None
        if record["status"] == "ok":
            labels = np.load(labels_out)
            labels_out.unlink()
            if record["seconds"] < REPEAT_BELOW_S:
                # Shared 2-core machines are noisy: quick runs are repeated and the median quoted.
                records = [record] + [run_isolated(fit_job, spec, timeout_s=timeout_s, memory_cap_mb=MEMORY_CAP_MB)
                                      for _ in range(REPEATS - 1)]
                records = [r for r in records if r["status"] == "ok"]
                labels_out.unlink(missing_ok=True)
                record = {**record, "seconds_all": [r["seconds"] for r in records],
                          "seconds": round(float(np.median([r["seconds"] for r in records])), 3),
                          "peak_rss_mb": max(r["peak_rss_mb"] for r in records)}
        record["load_before"] = load
        shown = f"{record.get('seconds', '-')} s" if record["status"] == "ok" else record["status"]
        self.log(f"  {label}: {shown}, peak {record.get('peak_rss_mb')} MiB")
        return labels, record


def _measured(record: dict) -> dict:
    keep = ("status", "seconds", "seconds_all", "peak_rss_mb", "baseline_rss_mb", "wall_s", "load_before", "error")
    return {k: record[k] for k in keep if k in record}


# -- environment --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Hardware and software the figures were measured on."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                            "numpy": np.__version__}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    for module in ("sklearn", "scipy", "faiss", "dlib"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - absent is fine, it is only reported
            pass
    return info


def code_version() -> dict[str, str]:
    """Short SHA-256 of the clustering and benchmark sources measured (colleagues change them between runs)."""
    import hashlib

    out = {}
    for folder in ("components/cluster", "components/identities", "components/bench"):
        digest = hashlib.sha256()
        for path in sorted((PROJECT_ROOT / folder).glob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        out[folder] = digest.hexdigest()[:12]
    return out


def command_line(args) -> str:
    parts = ["faces bench cluster"]
    if getattr(args, "part", "all") != "all":
        parts.append(f"--part {args.part}")
    if getattr(args, "part", "all") in ("all", "scale") and getattr(args, "sizes", None):
        parts.append(f"--sizes {args.sizes}")
    if getattr(args, "algorithms", None):
        parts.append(f"--algorithms {args.algorithms}")
    if getattr(args, "out", None) and str(args.out) != "bench/results/cluster.json":
        parts.append(f"--out {args.out}")
    return " ".join(parts)


# -- LFW data -----------------------------------------------------------------------------------


def lfw_photos(root: Path) -> tuple[list[Path], np.ndarray, set[str], set[str]]:
    """All LFW photos, their names, and the people of people.txt folds 1-5 and 6-10."""
    identities = list_identities(root)
    paths = [path for name in identities for path in identities[name]]
    names = np.array([name for name in identities for _ in identities[name]])
    folds = read_people_folds(root)
    calibration = {name for fold in folds[:5] for name, _ in fold}
    held_out = {name for fold in folds[5:] for name, _ in fold}
    return paths, names, calibration, held_out


def lfw_embeddings(settings: Settings, root: Path, pipeline: str, progress: bool = True):
    """(vectors, found, paths, names, calibration people, held-out people) for one pipeline over all of LFW."""
    from components.bench.lfw_verify import DlibPipeline, EnginePipeline, embed_all

    paths, names, calibration, held_out = lfw_photos(root)
    model = EnginePipeline(settings) if pipeline == "engine" else DlibPipeline()
    vectors, found = embed_all(model, paths, pipeline, progress, photo_set="lfw_all")
    return vectors, found, paths, names, calibration, held_out, model.version


# -- quality ------------------------------------------------------------------------------------


def _row(algorithm: str, setting: str, split: str, params: dict, scores: dict | None, record: dict,
         n_faces: int) -> dict:
    row = {"algorithm": algorithm, "setting": setting, "split": split, "faces": n_faces, "params": _jsonable(params),
           **_measured(record)}
    if scores:
        row.update(scores)
    return row


def dlib_labels(X: np.ndarray, threshold: float) -> np.ndarray:
    import dlib

    descriptors = [dlib.vector(row) for row in np.asarray(X, np.float64).tolist()]
    return np.asarray(dlib.chinese_whispers_clustering(descriptors, float(threshold)), np.int64)


def quality_part(settings: Settings, wanted: str | None, runner: Runner, root: Path, progress: bool = True) -> dict:
    """LFW quality: calibrate on folds 1-5 people, score on folds 6-10 people and on all of LFW."""
    algorithms, _, grids, found_registry = algorithm_registry()
    names_wanted = select(list(algorithms), wanted)
    vectors, found, paths, names, calibration_people, held_out_people, version = lfw_embeddings(
        settings, root, "engine", progress)
    rng = np.random.default_rng(settings.base.seed)
    # A photo collection is not sorted by person; neither is the benchmark's input.
    order = rng.permutation(int(found.sum()))
    X = np.ascontiguousarray(vectors[found][order], np.float32)
    y = names[found][order]
    calib = np.isin(y, list(calibration_people))
    held = np.isin(y, list(held_out_people))
    data = {"all": runner.save("lfw_all", X), "held_out": runner.save("lfw_held_out", X[held])}
    split_rows = {"all": np.ones(len(X), bool), "held_out": held}
    result: dict[str, Any] = {
        "protocol": "parameters chosen by BCubed F on the people of people.txt folds 1-5; scored on the people of "
                    "folds 6-10 (held_out) and on all of LFW (all); shipped defaults scored on all of LFW. Main "
                    "(centre) face per photo; photos without a face are left out (counted). Time: fit only, in its "
                    "own process; peak memory: that process's peak resident set (interpreter and data included).",
        "selection_metric": "bcubed_f1",
        "selection_why": "pairwise F counts photo pairs, and George W. Bush's 530 photos make 140,185 of LFW's "
                         "242,014 same-person pairs: pairwise F mostly scores one identity. BCubed F averages "
                         "over photos, so every person counts by their photos.",
        "registry": "components.cluster.registry" if found_registry else "not found: Chinese Whispers only",
        "embedder": version,
        "photos": len(paths),
        "people": int(np.unique(names).size),
        "faces": {"all": int(len(X)), "calibration": int(calib.sum()), "held_out": int(held.sum())},
        "people_clustered": {"calibration": int(np.unique(y[calib]).size), "held_out": int(np.unique(y[held]).size)},
        "photos_without_face": int((~found).sum()),
        "goal": GOALS["quality"],
        "anchor": PUBLISHED_ANCHOR,
        "algorithms": {},
    }
    for name in names_wanted:
        cls = algorithms[name]
        runner.log(f"[quality] {name}")
        defaults = shipped_defaults(cls, settings)
        began = time.perf_counter()
        entry: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__name__}", "shipped_defaults": _jsonable(defaults),
                                 "grid": _jsonable(grids.get(name, {}))}
        try:
            chosen, curve = calibrate(cls, grids.get(name, {}), X[calib], y[calib], base=defaults)
        except Exception as error:  # noqa: BLE001
            entry["error"] = f"calibration failed: {error}"
            result["algorithms"][name] = entry
            continue
        entry["calibration_seconds"] = round(time.perf_counter() - began, 1)
        entry["calibrated"] = _jsonable(chosen)
        entry["chosen_at_grid_edge"] = grid_edges(grids.get(name, {}), chosen)
        entry["calibration_curve"] = _jsonable(curve)
        calibrated = {**defaults, **chosen}
        rows = []
        for setting, params, split in (("calibrated", calibrated, "held_out"), ("calibrated", calibrated, "all"),
                                       ("shipped defaults", defaults, "all")):
            mask = split_rows[split]
            labels, record = runner.run(data[split], timeout_for(int(mask.sum())), f"{name} {setting} {split}",
                                        kind="estimator", algorithm=name, params=params)
            scores = score(labels, y[mask], X[mask]) if labels is not None else None
            row = _row(name, setting, split, params, scores, record, int(mask.sum()))
            row["chosen"] = _jsonable(chosen if setting == "calibrated" else {})
            rows.append(row)
        entry["rows"] = rows
        held_row = rows[0]
        entry["meets_goal"] = bool(held_row.get("status") == "ok"
                                   and held_row["pairwise_f1"] >= GOALS["quality"]["pairwise_f1"]
                                   and held_row["bcubed_f1"] >= GOALS["quality"]["bcubed_f1"])
        result["algorithms"][name] = entry
    if wants_dlib(wanted):
        result["dlib_reference"] = dlib_quality(settings, runner, root, progress)
    result["table"] = quality_table(result)
    return result


def dlib_quality(settings: Settings, runner: Runner, root: Path, progress: bool) -> dict:
    """dlib's pipeline end to end: its encodings, its Chinese Whispers (all pairs), default and calibrated."""
    from components.bench import reference_dlib

    if not reference_dlib.available():
        return {"skipped": "dlib reference pipeline not installed (pip install .[reference])"}
    runner.log("[quality] dlib reference (encodings cached after the first run; ~22 min without the cache)")
    vectors, found, paths, names, calibration_people, held_out_people, version = lfw_embeddings(
        settings, root, "dlib", progress)
    order = np.random.default_rng(settings.base.seed).permutation(int(found.sum()))
    X = np.ascontiguousarray(vectors[found][order], np.float64)
    y = names[found][order]
    calib = np.isin(y, list(calibration_people))
    held = np.isin(y, list(held_out_people))
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)  # silhouette is cosine, as for every other row
    data = {"all": runner.save("dlib_all", X), "held_out": runner.save("dlib_held_out", X[held])}
    split_rows = {"all": np.ones(len(X), bool), "held_out": held}
    curve = []
    for threshold in DLIB_GRID:
        began = time.perf_counter()
        labels = dlib_labels(X[calib], threshold)
        curve.append({"params": {"threshold": threshold}, **score(labels, y[calib]),
                      "seconds": round(time.perf_counter() - began, 3)})
    chosen = max(curve, key=lambda row: row["bcubed_f1"])["params"]["threshold"]
    rows = []
    for setting, threshold, split in (("calibrated", chosen, "held_out"), ("calibrated", chosen, "all"),
                                      ("dlib default 0.5", DLIB_DEFAULT_THRESHOLD, "all")):
        mask = split_rows[split]
        labels, record = runner.run(data[split], timeout_for(int(mask.sum())), f"dlib {setting} {split}",
                                    kind="dlib", threshold=threshold)
        scores = score(labels, y[mask], unit[mask]) if labels is not None else None
        row = _row("dlib chinese_whispers_clustering", setting, split, {"threshold": threshold}, scores, record,
                   int(mask.sum()))
        row["chosen"] = {"threshold": threshold} if setting == "calibrated" else {}
        rows.append(row)
    return {
        "pipeline": f"dlib HOG + 5-point + ResNet ({version}), Euclidean distance on its unnormalised encodings",
        "clustering": "dlib.chinese_whispers_clustering: all pairs, O(N^2)",
        "faces": {"all": int(len(X)), "calibration": int(calib.sum()), "held_out": int(held.sum())},
        "photos_without_face": int((~found).sum()),
        "default_threshold": DLIB_DEFAULT_THRESHOLD,
        "calibrated": {"threshold": chosen},
        "chosen_at_grid_edge": grid_edges({"threshold": list(DLIB_GRID)}, {"threshold": chosen}),
        "calibration_curve": curve,
        "rows": rows,
    }


def _increase(record: dict) -> float | None:
    """Memory the fit itself added: peak minus the resident size just before it."""
    if record.get("status") != "ok" or record.get("baseline_rss_mb") is None:
        return None
    return round(max(record["peak_rss_mb"] - record["baseline_rss_mb"], 0.0), 1)


def quality_table(result: dict) -> list[dict]:
    """One flat row per (algorithm, setting, split), ours first, then dlib, then the published anchor."""
    rows = []
    for entry in result.get("algorithms", {}).values():
        rows.extend(entry.get("rows", []))
    rows.extend(result.get("dlib_reference", {}).get("rows", []))
    table = []
    for row in rows:
        flat = {k: row.get(k) for k in ("algorithm", "setting", "split", "faces", *METRIC_KEYS, "true_identities",
                                        "seconds", "peak_rss_mb", "status")}
        flat["fit_increase_mb"] = _increase(row)
        flat["params"] = row.get("params")
        flat["chosen"] = row.get("chosen")
        table.append(flat)
    table.append({"algorithm": PUBLISHED_ANCHOR["algorithm"], "setting": PUBLISHED_ANCHOR["setting"], "split": "all",
                  "pairwise_f1": PUBLISHED_ANCHOR["pairwise_f1"], "status": "published",
                  "source": PUBLISHED_ANCHOR["source"]})
    return table


# -- scale --------------------------------------------------------------------------------------


def scale_sizes(sizes: list[int]) -> list[int]:
    """The sizes asked plus a quarter and a half of the smallest (for the growth exponent), ascending."""
    smallest = min(sizes)
    extra = [smallest // 4, smallest // 2] if smallest >= 2000 else []
    return sorted(set(sizes) | set(extra))


def lfw_statistics(settings: Settings, root: Path, progress: bool = True) -> dict:
    from components.bench.synthetic import fit_lfw_statistics

    vectors, found, _, names, _, _, version = lfw_embeddings(settings, root, "engine", progress)
    stats = fit_lfw_statistics(vectors[found], names[found], seed=settings.base.seed)
    stats["embedder"] = version
    return stats


def scale_part(settings: Settings, wanted: str | None, sizes: list[int], runner: Runner, root: Path,
               progress: bool = True, stats: dict | None = None) -> dict:
    """Time and peak memory of every algorithm on synthetic LFW-like embeddings of growing size."""
    from components.bench.synthetic import cosine_statistics, synthetic_embeddings

    algorithms, scalable, _, found_registry = algorithm_registry()
    names_wanted = select(list(algorithms), wanted)
    stats = stats or lfw_statistics(settings, root, progress)
    all_sizes = scale_sizes(sizes)
    runs: dict[str, list[dict]] = {name: [] for name in names_wanted}
    with_dlib = wants_dlib(wanted)
    if with_dlib:
        runs[DLIB_NAME] = []
    cw_threshold = settings.cluster.threshold
    dlib_threshold = round(math.sqrt(2 - 2 * cw_threshold), 4)  # the same edges, as a distance between unit vectors
    generated = {}
    for n in all_sizes:
        runner.log(f"[scale] n = {n:,}")
        began = time.perf_counter()
        X, truth = synthetic_embeddings(n, stats, seed=settings.base.seed)
        gen_s = time.perf_counter() - began
        sample = np.isin(truth, np.unique(truth)[:5000])  # statistics of a subset: cheap at any n
        generated[str(n)] = {"seconds": round(gen_s, 2), "identities": int(truth.max()) + 1,
                             **{f"{k}_cosine": v for k, v in cosine_statistics(X[sample], truth[sample]).items()}}
        data = runner.save(f"synthetic_{n}", X)
        del X
        for name in runs:
            previous = runs[name][-1] if runs[name] else None
            base = {"n": n}
            if name == DLIB_NAME:
                if n > DLIB_MAX_N:
                    runs[name].append({**base, "status": f"skipped: all pairs, O(N^2), above {DLIB_MAX_N:,}"})
                    continue
            elif name not in scalable and n > QUADRATIC_MAX_N:
                runs[name].append({**base, "status": f"skipped: not in SCALABLE (O(N^2)), above {QUADRATIC_MAX_N:,}"})
                continue
            if previous and previous["status"] != "ok":
                reason = previous["status"] if previous["status"].startswith("skipped") else \
                    f"skipped: {previous['status']} at n = {previous['n']:,}"
                runs[name].append({**base, "status": reason})
                continue
            if name == DLIB_NAME:
                params = {"threshold": dlib_threshold}
                labels, record = runner.run(data, timeout_for(n), f"dlib n={n}", kind="dlib", threshold=dlib_threshold)
            else:
                params = shipped_defaults(algorithms[name], settings)
                labels, record = runner.run(data, timeout_for(n), f"{name} n={n}", kind="estimator", algorithm=name,
                                            params=params)
            row = {**base, "params": _jsonable(params), **_measured(record)}
            if labels is not None:
                row.update(light_score(labels, truth))
            runs[name].append(row)
        data.unlink()
    summary = {}
    for name, rows in runs.items():
        ok = [r for r in rows if r["status"] == "ok"]
        big = [r for r in ok if r["n"] >= min(sizes)]
        entry = {
            "scalable": name in scalable if name != DLIB_NAME else False,
            "growth_exponent": growth_exponent([r["n"] for r in ok], [r["seconds"] for r in ok]),
            "growth_exponent_requested_sizes": growth_exponent([r["n"] for r in big], [r["seconds"] for r in big]),
            "runs": rows,
        }
        entry["meets_goal_1m"] = goal_1m(rows)
        summary[name] = entry
    result = {
        "protocol": "synthetic embeddings with LFW's identity-size distribution and intra/inter-identity cosine "
                    "mean and spread (components.bench.synthetic), shipped default parameters; time = fit only, "
                    "in its own process; peak = that process's peak resident set, data included "
                    f"({'{:.0f}'.format(max(all_sizes) * 128 * 4 / 2**20)} MiB of float32 at the largest n). "
                    "dlib: dlib.chinese_whispers_clustering on the same unit vectors at the Euclidean distance "
                    "equivalent to the shipped cosine threshold.",
        "registry": "components.cluster.registry" if found_registry else "not found: Chinese Whispers only",
        "sizes": all_sizes,
        "sizes_requested": sorted(sizes),
        "quadratic_max_n": QUADRATIC_MAX_N,
        "timeouts_s": {str(n): timeout_for(n) for n in all_sizes},
        "memory_cap_mb": MEMORY_CAP_MB,
        "goal": GOALS["scale"],
        "lfw_statistics": stats,
        "generated": generated,
        "dlib_threshold_distance": dlib_threshold,
        "algorithms": summary,
    }
    result["table"] = scale_table(result)
    return result


def goal_1m(runs: list[dict]) -> bool | None:
    """Whether the run at 1M faces met the goal (time and peak memory); None when there was none or it was skipped."""
    run = next((r for r in runs if r["n"] == GOALS["scale"]["n"]), None)
    if run is None or run["status"].startswith("skipped"):
        return None
    return bool(run["status"] == "ok" and run["seconds"] <= GOALS["scale"]["seconds"]
                and run["peak_rss_mb"] <= GOALS["scale"]["peak_rss_mb"])


def scale_table(result: dict) -> list[dict]:
    table = []
    for name, entry in result["algorithms"].items():
        row: dict[str, Any] = {"algorithm": name, "growth_exponent": entry["growth_exponent"],
                               "meets_goal_1m": goal_1m(entry["runs"])}
        for run in entry["runs"]:
            if run["status"] == "ok":
                row[str(run["n"])] = {"seconds": run["seconds"], "peak_rss_mb": run["peak_rss_mb"],
                                      "fit_increase_mb": _increase(run), "bcubed_f1": run.get("bcubed_f1")}
            else:
                row[str(run["n"])] = {"status": run["status"], "peak_rss_mb": run.get("peak_rss_mb")}
        table.append(row)
    return table


# -- stream -------------------------------------------------------------------------------------


def stream_assign_diagnostic(settings: Settings) -> list[float]:
    """Assignment thresholds of the stream part's sensitivity check: the model's verification and
    clustering thresholds (params.yaml's) and :data:`STREAM_ASSIGN_DIAGNOSTIC`, ascending."""
    return sorted({float(settings.verify.threshold), float(settings.cluster.threshold),
                   *map(float, STREAM_ASSIGN_DIAGNOSTIC)})


def stream_part(settings: Settings, root: Path, progress: bool = True, n_batches: int = 20) -> dict:
    """LFW in random order through the identity life cycle, beside one-shot clustering of everything."""
    from components.identities.lifecycle import Policy, cluster_faces
    from components.identities.stream import simulate_stream

    vectors, found, _, names, _, _, version = lfw_embeddings(settings, root, "engine", progress)
    order = np.random.default_rng(settings.base.seed).permutation(int(found.sum()))
    X = np.ascontiguousarray(vectors[found][order], np.float32)
    y = names[found][order]
    photos = np.arange(len(X))  # one (main) face per photo
    policy = Policy.from_settings(settings)
    began = time.perf_counter()
    one_shot = cluster_faces(X, photos, policy)
    one_shot_s = time.perf_counter() - began
    one_shot_scores = score(one_shot, y)
    result: dict[str, Any] = {
        "protocol": f"all of LFW (main faces), shuffled (seed {settings.base.seed}), fed in {n_batches} batches; "
                    "scored against the folder labels and against one-shot clustering of all faces with the same "
                    "policy (agreement: the one-shot labels taken as truth)",
        "embedder": version,
        "faces": int(len(X)),
        "n_batches": n_batches,
        "policy": _jsonable({k: getattr(policy, k) for k in policy.__dataclass_fields__}),
        "one_shot": {"seconds": round(one_shot_s, 2), **one_shot_scores},
        "modes": {},
    }
    # The shipped policy in both modes, then the life cycle with stricter assignment thresholds: a
    # sensitivity check (scored on all of LFW, so not a calibration), marked as such in the table.
    variants = [(mode, mode, policy) for mode in ("lifecycle", "recluster_all")]
    variants += [(f"lifecycle, assign_threshold={t} (diagnostic)", "lifecycle", replace(policy, assign_threshold=t))
                 for t in stream_assign_diagnostic(settings) if t != policy.assign_threshold]
    for key, mode, variant in variants:
        print(f"[stream] {key}", file=sys.stderr, flush=True)
        began = time.perf_counter()
        out = simulate_stream(X, photos, n_batches=n_batches, policy=variant, mode=mode)
        seconds = time.perf_counter() - began
        labels = np.asarray(out["labels"])
        truth = score(labels, y)
        agreement = score(labels, one_shot)
        result["modes"][key] = {
            "mode": mode,
            "assign_threshold": variant.assign_threshold,
            "shipped_policy": variant == policy,
            "seconds": round(seconds, 2),
            "seconds_split": out.get("seconds"),
            **{k: truth.get(k) for k in METRIC_KEYS if k != "silhouette"},
            "agreement_with_one_shot": {k: agreement[k] for k in ("pairwise_f1", "bcubed_f1", "nmi", "ari")},
            "stability": out.get("stability"),
            "n_identities": out.get("n_identities"),
            "pool_size": out.get("pool_size"),
            "assigned_on_arrival": out.get("assigned_on_arrival"),
            "reclusterings": len(out.get("reclusterings", [])),
        }
    result["table"] = stream_table(result)
    return result


def stream_table(result: dict) -> list[dict]:
    one = result["one_shot"]
    table = [{"mode": "one-shot (all faces at once)", "pairwise_f1": one["pairwise_f1"], "bcubed_f1": one["bcubed_f1"],
              "agreement_pairwise_f1": 1.0, "agreement_bcubed_f1": 1.0, "changed_share_mean": None,
              "changed_share_max": None, "seconds": one["seconds"]}]
    for mode, entry in result["modes"].items():
        stability = entry.get("stability") or {}
        table.append({"mode": f"stream: {mode}", "shipped_policy": entry.get("shipped_policy"),
                      "n_identities": entry.get("n_identities"), "pool_size": entry.get("pool_size"),
                      "pairwise_f1": entry["pairwise_f1"], "bcubed_f1": entry["bcubed_f1"],
                      "agreement_pairwise_f1": entry["agreement_with_one_shot"]["pairwise_f1"],
                      "agreement_bcubed_f1": entry["agreement_with_one_shot"]["bcubed_f1"],
                      "changed_share_mean": stability.get("changed_share_mean"),
                      "changed_share_max": stability.get("changed_share_max"), "seconds": entry["seconds"]})
    return table


# -- report -------------------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _params_text(params) -> str:
    if not params:
        return ""
    return ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("seed",))


def markdown(result: dict) -> str:
    """The tables of every part present, as markdown (what the README shows)."""
    out = []
    machine_info = result.get("machine", {})
    out.append(f"Measured {result.get('date')} on {machine_info.get('cpus')} x {machine_info.get('cpu', '?')}, "
               f"{machine_info.get('memory_gib', '?')} GiB: `{result.get('command')}`")
    quality = result.get("quality")
    if quality:
        out.append("")
        out.append(f"**Clustering quality on LFW** ({quality['faces']['all']:,} faces of {quality['photos']:,} photos; "
                   f"held-out = people of people.txt folds 6-10, {quality['faces']['held_out']:,} faces; parameters "
                   f"chosen by BCubed F on folds 1-5 people). Command: `{quality.get('command')}`")
        out.append("")
        header = ["Algorithm", "Setting", "Split", "Faces", "Pair P", "Pair R", "Pair F", "B³ P", "B³ R", "B³ F", "NMI",
                  "ARI", "Acc", "Clusters", "Singletons", "Silh.", "Time s", "Peak MiB", "Fit +MiB"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for row in quality["table"]:
            if row.get("status") not in ("ok", "published"):
                cells = [row["algorithm"], row["setting"], row["split"], _fmt(row.get("faces")),
                         *(["–"] * 12), row.get("status", "?"), _fmt(row.get("peak_rss_mb"), 0), "–"]
            else:
                setting = row["setting"]
                if row.get("chosen"):
                    setting = f"{setting} ({_params_text(row['chosen'])})"
                cells = [row["algorithm"], setting, row["split"], _fmt(row.get("faces"))]
                cells += [_fmt(row.get(k), 4) for k in ("pairwise_precision", "pairwise_recall", "pairwise_f1",
                                                        "bcubed_precision", "bcubed_recall", "bcubed_f1", "nmi", "ari",
                                                        "accuracy")]
                clusters = row.get("n_clusters")
                cells.append("–" if clusters is None else f"{clusters:,} / {row.get('true_identities', 0):,}")
                cells += [_fmt(row.get("singleton_share")), _fmt(row.get("silhouette")), _fmt(row.get("seconds"), 2),
                          _fmt(row.get("peak_rss_mb"), 0), _fmt(row.get("fit_increase_mb"), 0)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        edges = {name: e["chosen_at_grid_edge"] for name, e in quality.get("algorithms", {}).items()
                 if e.get("chosen_at_grid_edge")}
        if quality.get("dlib_reference", {}).get("chosen_at_grid_edge"):
            edges["dlib"] = quality["dlib_reference"]["chosen_at_grid_edge"]
        if edges:
            out.append("Calibrated at the edge of its grid (the best value may lie outside it): "
                       + "; ".join(f"{name}: {', '.join(keys)}" for name, keys in edges.items()) + ".")
        out.append(f"Published anchor: {PUBLISHED_ANCHOR['source']} (pairwise F quoted, not measured here). "
                   f"Goal on held-out people: pairwise F >= {GOALS['quality']['pairwise_f1']} and BCubed F >= "
                   f"{GOALS['quality']['bcubed_f1']}. Clusters: found / true identities. Peak: the run's whole "
                   "process (interpreter, libraries, data); Fit +MiB: what the clustering added to it.")
    scale = result.get("scale")
    if scale:
        out.append("")
        out.append(f"**Clustering at scale** (synthetic LFW-like embeddings, shipped defaults; fit seconds / peak MiB "
                   f"per N). Command: `{scale.get('command')}`")
        out.append("")
        sizes = [str(n) for n in scale["sizes"]]
        header = ["Algorithm", *[f"N={int(n):,}" for n in sizes], "Growth exponent", "1M goal (<= 600 s, <= 8 GiB)"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for row in scale["table"]:
            cells = [row["algorithm"]]
            for n in sizes:
                cell = row.get(n)
                if cell is None:
                    cells.append("–")
                elif "seconds" in cell:
                    cells.append(f"{cell['seconds']:.2f} s / {cell['peak_rss_mb']:.0f}")
                else:
                    cells.append("skipped (O(N²))" if "O(N^2)" in cell["status"] else cell["status"])
            cells += [_fmt(row["growth_exponent"], 2),
                      "not run" if row.get("meets_goal_1m") is None else _fmt(row["meets_goal_1m"])]
            out.append("| " + " | ".join(cells) + " |")
        stats = scale.get("lfw_statistics") or {}
        if stats.get("intra_cosine"):
            largest = scale.get("generated", {}).get(str(max(scale["sizes"])), {})
            made = (f"; generated at N={max(scale['sizes']):,}: intra {largest['intra_cosine']['mean']:.3f} ± "
                    f"{largest['intra_cosine']['std']:.3f}, inter {largest['inter_cosine']['mean']:.3f} ± "
                    f"{largest['inter_cosine']['std']:.3f}") if largest.get("intra_cosine") else ""
            out.append("")
            out.append(f"Synthetic data: LFW's identity sizes; cosine within an identity {stats['intra_cosine']['mean']:.3f}"
                       f" ± {stats['intra_cosine']['std']:.3f} and between identities "
                       f"{stats['inter_cosine']['mean']:.3f} ± {stats['inter_cosine']['std']:.3f} on LFW{made}. "
                       "Peak MiB includes the data (float32, 488 MiB at 1M). Growth exponent: slope of log time "
                       "against log N over every size run.")
        out.append("")
        out.append("BCubed F against the synthetic identities (shipped defaults; a sanity check, not the quality "
                   "benchmark):")
        out.append("")
        sizes_run = [n for n in sizes if any(isinstance(r.get(n), dict) and "seconds" in r[n] for r in scale["table"])]
        out.append("| Algorithm | " + " | ".join(f"N={int(n):,}" for n in sizes_run) + " |")
        out.append("|" + "---|" * (len(sizes_run) + 1))
        for row in scale["table"]:
            cells = [_fmt((row.get(n) or {}).get("bcubed_f1"), 4) for n in sizes_run]
            out.append(f"| {row['algorithm']} | " + " | ".join(cells) + " |")
    stream = result.get("stream")
    if stream:
        out.append("")
        out.append(f"**Streaming** (LFW, {stream['faces']:,} faces in {stream['n_batches']} batches). Command: "
                   f"`{stream.get('command')}`")
        out.append("")
        header = ["Mode", "Pair F", "B³ F", "Agreement with one-shot: pair F", "B³ F", "Identities", "Pool",
                  "Id changes (mean)", "Id changes (max)", "Time s"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for row in stream["table"]:
            out.append("| " + " | ".join([row["mode"], _fmt(row["pairwise_f1"], 4), _fmt(row["bcubed_f1"], 4),
                                          _fmt(row["agreement_pairwise_f1"], 4), _fmt(row["agreement_bcubed_f1"], 4),
                                          _fmt(row.get("n_identities")), _fmt(row.get("pool_size")),
                                          _fmt(row["changed_share_mean"]), _fmt(row["changed_share_max"]),
                                          _fmt(row["seconds"], 2)]) + " |")
        out.append("")
        out.append("Id changes: share of faces holding an identity at one re-clustering whose identity id differs at "
                   "the next. Rows marked diagnostic change the shipped policy and are scored on all of LFW: a "
                   "sensitivity check, not a calibration.")
    return "\n".join(out)


def write_result(out: Path, parts: dict[str, dict], command: str, machine_info: dict) -> dict:
    """Merge the parts just run into ``out`` (parts run before are kept), atomically."""
    out = Path(out)
    result: dict[str, Any] = {}
    if out.exists():
        try:
            result = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError):
            result = {}
    result.update({"benchmark": "cluster", "command": command,
                   "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info})
    result.update(parts)
    # Tables are rebuilt from the stored figures, so parts run earlier show in today's layout.
    for part, build in (("quality", quality_table), ("scale", scale_table), ("stream", stream_table)):
        if isinstance(result.get(part), dict):
            try:
                result[part]["table"] = build(result[part])
            except (KeyError, TypeError):
                pass  # a part written by an older layout keeps its own table
    result["markdown"] = markdown(result)
    save_result(out, _jsonable(result))
    return result


def run_benchmark(settings: Settings, out: Path, part: str = "all", sizes: list[int] | None = None,
                  algorithms: str | None = None, root: Path = LFW_ROOT_DEFAULT, progress: bool = True,
                  command: str = "faces bench cluster") -> dict:
    """Run the parts asked for and write (merge) the JSON. Returns the whole result."""
    root = root if root.is_absolute() else PROJECT_ROOT / root
    sizes = sizes or [10_000, 100_000, 1_000_000]
    workdir = Path(tempfile.mkdtemp(prefix="faces-bench-cluster-"))
    runner = Runner(workdir)
    info = machine()
    parts: dict[str, dict] = {}
    try:
        todo = ["quality", "scale", "stream"] if part == "all" else [part]
        for name in todo:
            began = time.perf_counter()
            date = datetime.now(UTC).isoformat(timespec="seconds")
            code = code_version()
            if name == "quality":
                body = quality_part(settings, algorithms, runner, root, progress)
            elif name == "scale":
                body = scale_part(settings, algorithms, sizes, runner, root, progress)
            else:
                body = stream_part(settings, root, progress)
            body = {"command": command, "date": date, "machine": info, "code_sha256": code,
                    "wall_s": round(time.perf_counter() - began, 1), **body}
            parts[name] = body
            # Write after every part: a long scale run must not lose the quality figures.
            result = write_result(out, parts, command, info)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(args, settings: Settings) -> int:
    """Entry point of ``faces bench cluster``."""
    sizes = [int(float(s)) for s in str(args.sizes).split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"--sizes: expected positive integers, got {args.sizes!r}")
    result = run_benchmark(settings, Path(args.out), part=args.part, sizes=sizes, algorithms=args.algorithms,
                           command=command_line(args))
    print(result["markdown"])
    print(f"\nwritten: {args.out}")
    return 0
