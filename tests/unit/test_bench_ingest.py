"""The ingest benchmark's accounts: the detector before against the new one, DAG figures kept from an earlier run."""

from __future__ import annotations

import pytest

from components.bench import with_detect_mode
from components.bench.ingest import carried_dag, detector_comparison, load_1min, table
from components.settings import load_settings


def test_each_detector_counts_at_its_best_round():
    # Round 2 of the detector before ran under more load (40 s): its best round (30 s) counts.
    speedup = detector_comparison([30.0, 40.0], [20.0, 18.0], 1000, 1.5, baseline_mode="package", mode="fast")
    assert speedup["photos_per_hour_baseline_detect"] == 120_000 and speedup["photos_per_hour"] == 200_000
    assert speedup["ratio"] == pytest.approx(30 / 18, abs=1e-3)
    assert speedup["ratio_per_round"] == [1.5, 2.222]
    assert speedup["goal_met"] and speedup["rounds"] == 2
    assert not detector_comparison([30.0], [25.0], 10, 1.8, baseline_mode="package", mode="fast")["goal_met"]
    with pytest.raises(ValueError):
        detector_comparison([30.0, 31.0], [20.0], 10, 1.5, baseline_mode="package", mode="fast")


def test_only_the_detector_changes():
    """The baseline is the detector before as it ran (20-px faces looked for), all else the same."""
    settings = load_settings()  # params.yaml: detect.mode fast, the engine's detector
    before = with_detect_mode(settings, "package")
    assert before.detect.mode == "package" and settings.detect.mode == "fast"
    assert before.detect.min_face_size == 20 and settings.detect.min_face_size == 32
    assert before.detect.max_side == settings.detect.max_side and before.embed == settings.embed
    assert with_detect_mode(settings, "fast") == settings


def test_load_average_is_read_from_uptime():
    assert load_1min("11:07:55 up 37 min,  0 user,  load average: 5.83, 7.84, 7.13") == 5.83
    assert load_1min("unknown") is None and load_1min(None) is None


PREVIOUS = {
    "date": "2026-12-06T11:07:55+00:00", "command": "faces bench ingest --lfw-photos 1000",
    "machine": {"uptime_before": "load average: 8.36, 7.38, 4.48", "uptime_after": "load average: 5.83, 7.84, 7.13"},
    "params": {"shard_size": 64},
    "results": {"lfw": {"photos": 1000, "goal_photos_per_hour": 150_000,
                        "workflow_direct": {"photos": 1000, "photos_per_hour": 52136, "wall_s": 69.1},
                        "dag": {"photos": 1000, "photos_per_hour": 22772, "steps_s": {"detect": 78.0}},
                        "dag_cold": {"photos": 1000, "photos_per_hour": 17151, "steps_s": {"detect": 91.9}},
                        "dag_throughput_over_direct": 0.437, "goal_met_dag": False}},
}


def test_dag_figures_are_carried_with_their_run_and_kept_on_a_second_skip():
    carried = carried_dag(PREVIOUS, "lfw")
    assert carried["note"].startswith("NOT this run")
    assert carried["date"] == PREVIOUS["date"] and carried["uptime_before"].endswith("8.36, 7.38, 4.48")
    assert carried["detect_mode"].startswith("package")  # that run predates detect.mode
    assert carried["dag"]["photos_per_hour"] == 22772 and carried["dag_throughput_over_direct"] == 0.437
    assert carried["workflow_direct_photos_per_hour"] == 52136  # the direct path its ratios are to
    # A later run that skips the DAG again keeps the first run's figures and label, not its own.
    again = {"date": "later", "results": {"lfw": {"dag_from_earlier_run": carried}}}
    assert carried_dag(again, "lfw") == carried
    assert carried_dag(None, "lfw") is None and carried_dag(PREVIOUS, "fullhd") is None


def test_table_names_the_detector_and_what_is_from_the_earlier_run():
    entry = {"photos": 1000, "goal_photos_per_hour": 150_000,
             "workflow_direct_baseline_detect": {"photos": 1000, "photos_per_hour": 60_000, "detect_mode": "package"},
             "workflow_direct": {"photos": 1000, "photos_per_hour": 96_000, "detect_mode": "fast"},
             "detector_speedup": {"ratio": 1.6, "goal_ratio": 1.5, "goal_met": True},
             "dag_from_earlier_run": carried_dag(PREVIOUS, "lfw")}
    rows = table({"results": {"lfw": entry}})
    assert [row["path"] for row in rows] == ["workflow_direct_baseline_detect", "workflow_direct", "dag", "dag_cold",
                                             "detector_speedup"]
    assert [row.get("detect_mode") for row in rows[:2]] == ["package", "fast"]
    assert "from_earlier_run" not in rows[1] and rows[2]["from_earlier_run"] == PREVIOUS["date"]
    assert rows[-1] == {"photos": "lfw", "path": "detector_speedup", "ratio": 1.6, "goal_ratio": 1.5, "goal_met": True}
