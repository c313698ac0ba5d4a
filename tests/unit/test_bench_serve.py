"""The serving benchmark's second service: its params file, and the comparison with the detector before."""

from __future__ import annotations

from components.bench import with_detect_mode, write_params
from components.bench.serve import compare, goals
from components.settings import load_settings


def test_params_file_outside_the_project_gives_the_same_settings_but_the_detector(tmp_path):
    settings = load_settings()
    path = write_params(tmp_path / "params.yaml", with_detect_mode(settings, "package"))
    again = load_settings(path)  # relative paths would resolve against tmp_path: they must be spelled out
    assert again.detect.mode == "package" and again.detect.min_face_size == 20  # the detector before, as it ran
    assert again == with_detect_mode(settings, "package")


def level(p50, errors=0, rps=5.0):
    return {"p50_ms": p50, "p95_ms": p50 * 1.2, "errors": errors, "requests_per_s": rps}


def test_the_goal_is_a_ratio_to_the_baseline_measured_in_the_same_run():
    ours = {"verify": {"1": level(120.0), "32": level(900.0, rps=9.0)}, "identify": {"1": level(60.0), "32": level(400.0)}}
    before = {"verify": {"1": level(200.0), "32": level(1500.0, 1)}, "identify": {"1": level(90.0), "32": level(600.0)}}
    result = goals(ours, before, (1, 32))
    assert result["verify_p50_at_1_ratio_to_baseline"] == 0.6 and result["verify_p50_ratio_met"]
    assert result["errors_at_32"] == 0 and result["zero_errors_at_32_met"] and result["baseline_errors_at_32"] == 1
    rows = compare(ours, before)
    assert rows["verify"]["32"]["p50_ratio_to_baseline"] == 0.6 and rows["verify"]["32"]["baseline_errors"] == 1
    slower = goals({**ours, "verify": {**ours["verify"], "1": level(150.0)}}, before, (1, 32))
    assert slower["verify_p50_at_1_ratio_to_baseline"] == 0.75 and not slower["verify_p50_ratio_met"]
