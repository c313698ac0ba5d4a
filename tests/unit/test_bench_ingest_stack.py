"""The real Airflow path's accounts: where a DAG run's wall time went, from its task instances' timestamps."""

from __future__ import annotations

import pytest

from components.bench.ingest_stack import airflow_figures, exit_lags, timeline
from components.bench.local_stack import client_values

DOWNSTREAM = {"plan": ["validate_images"], "validate_images": ["detect"], "detect": ["validate_faces"],
              "validate_faces": ["embed"], "embed": ["assign"], "assign": ["record_metrics"], "record_metrics": []}


def at(seconds: float) -> str:
    return f"2026-01-02T00:00:{seconds:06.3f}Z"


def ti(task: str, start: float, end: float, index: int = -1, queued: float | None = None) -> dict:
    return {"task_id": task, "map_index": index, "start_date": at(start), "end_date": at(end),
            "queued_when": at(queued if queued is not None else start - 0.5), "scheduled_when": None}


RUN = {"start_date": at(0), "end_date": at(30), "queued_at": at(0)}
# Two shards on two slots: detect 0 and 1 overlap by 2 s; nothing runs 0-1, 3-4, 19-20, 24-25, 27-28.
TASKS = [ti("plan", 1, 3), ti("validate_images", 4, 6, queued=3.2),
         ti("detect", 7, 11, 0), ti("detect", 9, 13, 1),
         ti("validate_faces", 13, 14, 0), ti("validate_faces", 14, 15, 1),
         ti("embed", 15, 17, 0), ti("embed", 17, 19, 1),
         ti("assign", 20, 24), ti("record_metrics", 25, 27), ti("unfinished", 28, 28)]
TASKS[-1]["end_date"] = None


def test_the_runs_time_splits_into_tasks_gaps_and_overlaps():
    spent = timeline(RUN, TASKS, DOWNSTREAM)
    assert spent["wall_s"] == 30 and spent["task_instances"] == 10  # the unfinished one is left out
    assert spent["task_durations_sum_s"] == pytest.approx(2 + 2 + 4 + 4 + 1 + 1 + 2 + 2 + 4 + 2)
    # Covered: 1-3, 4-6, 7-19, 20-24, 25-27 = 22 s of 30; overlap 9-11 (2 s).
    assert spent["no_task_running_s"] == pytest.approx(8) and spent["two_or_more_running_s"] == pytest.approx(2)
    # Waits after the upstream's end: plan 1 (run start), validate_images 1, detect 1 and 3 (both after
    # validate_images at 6), validate_faces 2 (detect 0 ended 11, started 13) and 1, embed 1 and 2 (its own
    # shard's validate_faces), assign 1 (after the last embed), record_metrics 1.
    assert spent["wait_after_upstream_s"]["sum"] == pytest.approx(1 + 1 + 1 + 3 + 2 + 1 + 1 + 2 + 1 + 1)
    assert spent["per_task"]["detect"] == {"instances": 2, "mean_duration_s": 4.0, "mean_wait_after_upstream_s": 2.0}
    # Each wait is the scheduler's part (ready -> queued) plus the executor's (queued -> started).
    scheduler = spent["ready_to_queued_s (scheduler)"]
    executor = spent["queued_to_started_s (executor, task process start)"]
    assert executor["sum"] == pytest.approx(9 * 0.5 + 0.8)  # queued 0.5 s before starting; validate_images 0.8 s
    assert scheduler["sum"] + executor["sum"] == pytest.approx(spent["wait_after_upstream_s"]["sum"])


def test_outside_the_components_per_task_instance():
    metrics = {"photos": 100, "faces": 110, "shards": 2,
               "seconds": {"validate": 2.0, "load": 0.5, "detect": 6.5, "embed": 3.0, "assign": 1.0, "store": 2.0}}
    figures = airflow_figures(RUN, TASKS, DOWNSTREAM, metrics, posted_to_done_s=31.5)
    assert figures["component_s"] == pytest.approx(15.0) and figures["outside_components_s"] == pytest.approx(15.0)
    assert figures["task_instances"] == 10 and figures["outside_components_per_task_s"] == pytest.approx(1.5)
    assert figures["photos_per_hour"] == 12_000 and figures["overhead_share"] == 0.5
    assert figures["queued_to_end_s"] == 30


def test_the_stack_env_file_is_read_unquoted(tmp_path):
    env = tmp_path / "env"
    env.write_text("# Written by `make up`\n\nexport FACES_WORK_URI=s3://faces/work\n"
                   "export FACES_STORE_URL='sqlite:////tmp/a b/faces.db'\n")
    assert client_values(env) == {"FACES_WORK_URI": "s3://faces/work", "FACES_STORE_URL": "sqlite:////tmp/a b/faces.db"}


def test_exit_lags_pair_the_tasks_return_with_its_supervisors_end():
    lines = [
        '2026-12-06 14:00:38.099210+00:00 [info     ] Done. Returned value was: s3://x [airflow.task] ti_id=aa-1 try_number=1',
        '2026-12-06T14:00:38.362187Z [info     ] Trying to enqueue tasks: [...]',
        '2026-12-06T14:00:43.157875Z [info     ] Workload finished [supervisor] duration=13.2 exit_code=0 workload_id=aa-1',
        '2026-12-06 14:00:44.700000+00:00 [info     ] Done. Returned value was: s3://y [airflow.task] ti_id=bb-2 try_number=1',
        '2026-12-06T14:00:44.800000Z [info     ] Workload finished [supervisor] duration=1.0 exit_code=0 workload_id=bb-2',
        '2026-12-06T14:00:45.000000Z [info     ] Workload finished [supervisor] duration=1.0 exit_code=0 workload_id=other-run',
        '\t<TaskInstance: face_ingest.detect ...> ti_id=aa-1',
    ]
    lags = exit_lags(lines, {"aa-1", "bb-2"})
    assert lags["task_instances"] == 2 and lags["over_1s"] == 1
    assert lags["sum_s"] == pytest.approx(5.058665 + 0.1, abs=1e-3) and lags["max_s"] == pytest.approx(5.059, abs=1e-3)
