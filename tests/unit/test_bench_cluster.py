"""Unit tests for components.bench.cluster (calibration, growth exponent, JSON) and bench.memory."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

from components.bench import cluster as bench
from components.bench.memory import run_isolated
from components.report.metrics import bcubed_prf, pairwise_prf
from components.settings import load_settings

# One big identity of 30 photos and ten of 2: pairwise F is mostly about the big one.
TRUTH = np.r_[np.zeros(30, int), np.repeat(np.arange(1, 11), 2)]
LABELLINGS = {
    # big identity intact, every pair split: pairwise F ~0.99, BCubed F ~0.89
    "keep_big": np.r_[np.zeros(30, int), np.arange(1, 21)],
    # one photo of the big identity split off, pairs intact: pairwise F ~0.97, BCubed F ~0.98
    "keep_pairs": np.r_[np.zeros(29, int), [99], np.repeat(np.arange(1, 11), 2)],
    # everything in one cluster
    "one": np.zeros(50, int),
}


class FakeClusterer:
    def __init__(self, mode: str = "one", seed: int = 0):
        self.mode, self.seed = mode, seed

    def fit_predict(self, X):
        if self.mode == "broken":
            raise RuntimeError("no")
        return LABELLINGS[self.mode]


def test_calibration_chooses_by_bcubed_f_not_pairwise_f():
    pw = {m: pairwise_prf(TRUTH, labels)[2] for m, labels in LABELLINGS.items()}
    bc = {m: bcubed_prf(TRUTH, labels)[2] for m, labels in LABELLINGS.items()}
    assert max(pw, key=pw.get) == "keep_big" and max(bc, key=bc.get) == "keep_pairs"  # the premise
    X = np.zeros((50, 4), np.float32)
    chosen, curve = bench.calibrate(FakeClusterer, {"mode": ["one", "keep_big", "keep_pairs", "broken"]}, X, TRUTH)
    assert chosen == {"mode": "keep_pairs"}
    assert [row["params"]["mode"] for row in curve] == ["one", "keep_big", "keep_pairs", "broken"]
    assert "error" in curve[-1] and curve[2]["bcubed_f1"] == pytest.approx(bc["keep_pairs"], abs=1e-4)


def test_calibration_picks_the_right_chinese_whispers_threshold_on_blobs():
    from components.cluster import ChineseWhispers

    rng = np.random.default_rng(0)
    sizes = [1, 1, 2, 3, 5, 8, 12]
    centres = rng.normal(size=(len(sizes), 32))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[truth] + rng.normal(scale=0.1, size=(len(truth), 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    chosen, curve = bench.calibrate(ChineseWhispers, {"threshold": [-1.0, 0.6, 0.99999]}, x, truth)
    assert chosen == {"threshold": 0.6}
    assert curve[1]["bcubed_f1"] == 1.0


def test_grid_points_cover_every_combination():
    points = bench.grid_points({"k": [1, 2], "t": [0.1, 0.2, 0.3]})
    assert len(points) == 6 and points[0] == {"k": 1, "t": 0.1} and points[-1] == {"k": 2, "t": 0.3}
    assert bench.grid_points({}) == [{}]


def test_growth_exponent_recovers_made_up_powers():
    n = [2_500, 5_000, 10_000, 100_000, 1_000_000]
    assert bench.growth_exponent(n, [3e-9 * v**2 for v in n]) == pytest.approx(2.0, abs=1e-6)
    assert bench.growth_exponent(n, [1e-5 * v for v in n]) == pytest.approx(1.0, abs=1e-6)
    noisy = [1e-5 * v * f for v, f in zip(n, [1.2, 0.9, 1.1, 0.95, 1.05])]
    assert bench.growth_exponent(n, noisy) == pytest.approx(1.0, abs=0.05)
    # failed runs (None) are left out; one size cannot give a slope
    assert bench.growth_exponent(n[:3], [1.0, None, 4.0]) == pytest.approx(1.0, abs=1e-6)
    assert bench.growth_exponent([10_000], [1.0]) is None


def test_noise_labels_become_singletons():
    labels = bench.as_labels([0, -1, 1, -1, 0])
    assert labels[0] == labels[4] and len(set(labels.tolist())) == 4


def test_shipped_defaults_of_chinese_whispers_come_from_params_yaml():
    from components.cluster import ChineseWhispers

    settings = load_settings()
    defaults = bench.shipped_defaults(ChineseWhispers, settings)
    assert defaults["threshold"] == settings.cluster.threshold and defaults["knn"] == settings.cluster.knn
    assert bench.shipped_defaults(FakeClusterer, settings) == {"mode": "one", "seed": 0}


def test_every_cosine_threshold_estimator_gets_the_calibrated_threshold():
    from components.cluster import ALGORITHMS

    settings = load_settings()
    for name in ("chinese_whispers", "kmeans", "gmm", "leiden", "infomap"):
        assert bench.takes_cosine_threshold(ALGORITHMS[name]), name
        assert bench.shipped_defaults(ALGORITHMS[name], settings)["threshold"] == settings.cluster.threshold, name
        ALGORITHMS[name](**bench.shipped_defaults(ALGORITHMS[name], settings))  # constructible as shipped
    # rank-order's threshold is a rank distance with a default of its own, not the cosine one
    for name in ("rank_order", "approx_rank_order"):
        assert not bench.takes_cosine_threshold(ALGORITHMS[name])
        assert bench.shipped_defaults(ALGORITHMS[name], settings)["threshold"] != settings.cluster.threshold
    for name in ("dbscan", "kmeans_dbscan"):
        assert "threshold" not in bench.shipped_defaults(ALGORITHMS[name], settings)


def test_stream_diagnostic_includes_the_models_own_thresholds():
    settings = load_settings()
    tried = bench.stream_assign_diagnostic(settings)
    assert tried == sorted(tried)
    assert {settings.verify.threshold, settings.cluster.threshold, *bench.STREAM_ASSIGN_DIAGNOSTIC} == set(tried)


def test_command_line_is_reconstructed():
    args = SimpleNamespace(part="scale", sizes="10000,100000", algorithms="leiden,dlib",
                           out="bench/results/cluster.json")
    assert bench.command_line(args) == "faces bench cluster --part scale --sizes 10000,100000 --algorithms leiden,dlib"
    assert bench.command_line(SimpleNamespace(part="quality", sizes="1", algorithms=None,
                                              out="bench/results/cluster.json")) == "faces bench cluster --part quality"


def _quality_part() -> dict:
    row = {"algorithm": "chinese_whispers", "setting": "calibrated", "split": "held_out", "faces": 7000,
           "params": {"threshold": 0.93, "knn": 30}, "chosen": {"threshold": 0.93}, "status": "ok", "seconds": 1.5,
           "peak_rss_mb": 300.0,
           **{k: 0.9 for k in bench.METRIC_KEYS}, "n_clusters": 3000, "true_identities": 2914}
    part = {"command": "faces bench cluster --part quality", "photos": 13233, "people": 5749,
            "faces": {"all": 13233, "calibration": 6165, "held_out": 7068},
            "algorithms": {"chinese_whispers": {"rows": [row, {**row, "split": "all", "status": "timeout",
                                                                "seconds": None}]}},
            "dlib_reference": {"rows": [{**row, "algorithm": "dlib chinese_whispers_clustering"}]}}
    part["table"] = bench.quality_table(part)
    return part


def test_json_writer_has_the_keys_the_readme_table_needs_and_merges_parts(tmp_path):
    out = tmp_path / "cluster.json"
    bench.write_result(out, {"quality": _quality_part()}, "faces bench cluster --part quality", {"cpus": 2})
    stream = {"command": "faces bench cluster --part stream", "faces": 13233, "n_batches": 20,
              "one_shot": {"pairwise_f1": 0.9, "bcubed_f1": 0.9, "seconds": 3.0},
              "modes": {"lifecycle": {"pairwise_f1": 0.8, "bcubed_f1": 0.85, "seconds": 9.0,
                                      "agreement_with_one_shot": {"pairwise_f1": 0.9, "bcubed_f1": 0.95},
                                      "stability": {"changed_share_mean": 0.01, "changed_share_max": 0.02}}}}
    stream["table"] = bench.stream_table(stream)
    result = bench.write_result(out, {"stream": stream}, "faces bench cluster --part stream", {"cpus": 2})
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(bench._jsonable(result)))
    for key in ("benchmark", "command", "date", "machine", "markdown", "quality", "stream"):
        assert key in saved, key
    table = saved["quality"]["table"]
    for key in ("algorithm", "setting", "split", "faces", "pairwise_precision", "pairwise_recall", "pairwise_f1",
                "bcubed_precision", "bcubed_recall", "bcubed_f1", "nmi", "ari", "accuracy", "n_clusters",
                "singleton_share", "silhouette", "seconds", "peak_rss_mb", "status"):
        assert key in table[0], key
    assert table[-1]["status"] == "published" and table[-1]["pairwise_f1"] == 0.87 and "Otto" in table[-1]["source"]
    assert [r["algorithm"] for r in table[:3]] == ["chinese_whispers", "chinese_whispers",
                                                   "dlib chinese_whispers_clustering"]
    assert saved["stream"]["table"][1]["agreement_bcubed_f1"] == 0.95
    md = saved["markdown"]
    assert "| chinese_whispers | calibrated (threshold=0.93) | held_out | 7,000 | 0.9000 |" in md
    assert "timeout" in md and "published" in md and "Streaming" in md


def test_scale_part_end_to_end_on_a_tiny_size(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "REPEATS", 2)
    stats = {"dim": 128, "identity_sizes": {"1": 4, "2": 1, "5": 1},
             "intra_cosine": {"mean": 0.95, "std": 0.017}, "inter_cosine": {"mean": 0.84, "std": 0.035},
             "generator": {"noise_scale": 0.2285, "noise_dim": 14.6, "centre_scale": 0.3736, "centre_dim": 31.0}}
    runner = bench.Runner(tmp_path, log=lambda message: None)
    part = bench.scale_part(load_settings(), "chinese_whispers", [600], runner, tmp_path, stats=stats)
    cw = part["algorithms"]["chinese_whispers"]
    assert [r["n"] for r in cw["runs"]] == [600]
    run = cw["runs"][0]
    assert run["status"] == "ok", run
    assert len(run["seconds_all"]) == 2 and run["seconds"] == pytest.approx(np.median(run["seconds_all"]), abs=1e-3)
    assert run["seconds"] >= 0 and run["peak_rss_mb"] > 50 and run["baseline_rss_mb"] <= run["peak_rss_mb"]
    assert 0 < run["bcubed_f1"] <= 1 and run["true_identities"] > 0
    assert part["table"][0]["algorithm"] == "chinese_whispers" and "600" in part["table"][0]
    assert "dlib" not in part["algorithms"]  # --algorithms without "dlib" leaves the reference out
    assert not list(tmp_path.glob("*.npy"))  # scratch data removed


def test_fit_job_runs_dlib_chinese_whispers(tmp_path):
    pytest.importorskip("dlib")
    x = np.r_[np.zeros((3, 128)), np.ones((2, 128))]
    np.save(tmp_path / "x.npy", x)
    out = bench.fit_job({"kind": "dlib", "threshold": 0.5, "data": str(tmp_path / "x.npy"),
                         "labels_out": str(tmp_path / "labels.npy")})
    labels = np.load(tmp_path / "labels.npy")
    assert out["seconds"] >= 0 and len(set(labels[:3])) == 1 and labels[3] == labels[4] != labels[0]


def test_quadratic_algorithms_are_skipped_above_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "QUADRATIC_MAX_N", 300)
    monkeypatch.setattr(bench, "algorithm_registry", lambda: (
        {"slow": FakeSlow}, set(), {"slow": {}}, True))
    stats = {"dim": 16, "identity_sizes": {"1": 1},
             "generator": {"noise_scale": 0.2, "noise_dim": 8, "centre_scale": 0.4, "centre_dim": 8}}
    runner = bench.Runner(tmp_path, log=lambda message: None)
    monkeypatch.setattr(runner, "run", lambda data, timeout, label, **job: (np.zeros(200, int), {
        "status": "ok", "seconds": 0.1, "peak_rss_mb": 100.0}))
    part = bench.scale_part(load_settings(), "slow", [200, 400], runner, tmp_path, stats=stats)
    runs = part["algorithms"]["slow"]["runs"]
    assert runs[0]["status"] == "ok" and runs[1]["status"].startswith("skipped")


class FakeSlow:
    def __init__(self, seed: int = 0):
        self.seed = seed


def test_run_isolated_reports_result_timeout_and_error():
    # Standard-library callables keep the spawned children light (they import nothing of ours but memory.py).
    import math

    ok = run_isolated(time.sleep, 0.0, timeout_s=60)
    assert ok["status"] == "ok" and ok["peak_rss_mb"] > 1
    late = run_isolated(time.sleep, 30.0, timeout_s=1.0)
    assert late["status"] == "timeout" and late["wall_s"] < 20
    failed = run_isolated(math.sqrt, -1.0, timeout_s=60)
    assert failed["status"] == "error" and "math domain error" in failed["error"]


def test_grid_edges_flag_choices_at_either_end():
    grid = {"threshold": [0.9, 0.93, 0.96], "k": [10, 20], "mode": ["a", None]}
    assert bench.grid_edges(grid, {"threshold": 0.93, "k": 20}) == ["k"]
    assert bench.grid_edges(grid, {"threshold": 0.9, "k": 10, "mode": "a"}) == ["threshold", "k"]


def test_goal_at_one_million_is_judged_only_where_it_ran():
    ok = {"n": 1_000_000, "status": "ok", "seconds": 290.0, "peak_rss_mb": 2200.0}
    assert bench.goal_1m([{"n": 10_000, "status": "ok"}, ok]) is True
    assert bench.goal_1m([{**ok, "seconds": 700.0}]) is False
    assert bench.goal_1m([{**ok, "status": "timeout"}]) is False
    assert bench.goal_1m([{"n": 1_000_000, "status": "skipped: not in SCALABLE"}]) is None
    assert bench.goal_1m([{"n": 10_000, "status": "ok"}]) is None
