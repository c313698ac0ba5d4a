"""``faces bench ingest-stack``: the real Airflow path of face_ingest on the ``make up`` stack, beside the direct path.

``faces bench ingest`` measures the DAG with ``airflow dags test`` (one process, no
scheduler). This one runs it as a user does: the stack of deploy/local/stack.py
(SeaweedFS S3, MLflow, Airflow api-server + scheduler + dag-processor with the
LocalExecutor, BentoML, the people page), started in a temporary run dir on free
ports (or one already running, ``--stack-dir``), the photos uploaded to its S3, the
DAG unpaused and triggered through the REST API with ``conf: {"batch":
"s3://<bucket>/<prefix>"}`` and every other parameter at the trigger form's default.

1. ``up`` (timed), upload the batch and a small warm-up batch to S3 (timed).
2. Airflow warm-up: a run on the warm-up batch (the step server starts and loads its
   models then, as on a worker that ran a batch before); its wall time is reported apart.
3. Airflow: the measured run. Wall time = the DAG run's ``start_date`` -> ``end_date``
   (REST; ``queued_at`` -> ``end_date`` and the time from the POST to the observed end
   are kept too). Component seconds from the batch's ``metrics.json`` in the work area.
   Every task instance's ``scheduled``/``queued``/``start``/``end`` (REST) give the
   breakdown of the rest (:func:`timeline`).
4. Direct: ``run_direct`` of components/bench/ingest.py on the same S3 photos, in this
   process, with the environment of the stack's workers (its env file: S3 work area
   under a fresh prefix, MLflow server, a fresh SQLite identity store as the stack's,
   the same parameters file), warmed up on the same warm-up batch first. A fresh work
   prefix and store: the store keys photos by sha256, so a second path into the first's
   store would find every photo stored already.
5. ``down`` (if this command started the stack) and the step servers stopped, also on
   failure.

The machine's ``uptime`` is recorded before, after and between the phases. The result
(``bench/results/ingest_stack.json``) keeps the headline figures of the runs it replaces
under ``previous_runs`` (before/after a change, each with its own load).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from components.bench import save_result
from components.bench.ingest import _breakdown, _commit, _uptime, lfw_batch, load_1min, run_direct
from components.bench.local_stack import Stack, StackRunError, run_stack, stack_environment
from components.settings import PROJECT_ROOT

DAG_ID = "face_ingest"
GOAL_RATIO = 0.7  # the goal: the Airflow path's throughput >= 0.7x the direct path's


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def timeline(run: dict, tasks: list[dict], downstream: dict[str, list[str]]) -> dict:
    """Where the DAG run's wall time went, from its task instances' timestamps (REST fields).

    Args:
        run: the DAG run (``start_date``, ``end_date``).
        tasks: its task instances (``task_id``, ``map_index``, ``scheduled_when``,
            ``queued_when``, ``start_date``, ``end_date``).
        downstream: task id -> downstream task ids (the DAG's structure).

    Returns:
        ``no_task_running_s``: seconds of the run with no task instance running (the
        scheduler deciding, queueing, the executor starting task processes);
        ``two_or_more_running_s``; per task instance the wait from its upstream's end
        (the run's start for the first task) to its start, split into ``ready ->
        queued`` (scheduler, waiting for a slot included) and ``queued -> started``
        (executor: the supervisor and task process start); the task instances' summed
        durations, overall and per task.
    """
    origin = _time(run["start_date"])
    end = _time(run["end_date"])
    wall = (end - origin).total_seconds()

    def offset(value: str | None) -> float | None:
        moment = _time(value)
        return None if moment is None else (moment - origin).total_seconds()

    done = [t for t in tasks if t.get("start_date") and t.get("end_date")]
    spans = {(t["task_id"], t.get("map_index", -1)): (offset(t["start_date"]), offset(t["end_date"])) for t in done}
    upstream: dict[str, list[str]] = {}
    for task, children in downstream.items():
        for child in children:
            upstream.setdefault(child, []).append(task)
    busy = _merge(list(spans.values()))
    covered = sum(b - a for a, b in busy)
    # Seconds with two or more running: the sum of durations minus the union counts each overlap once
    # per extra task (exact for at most two at once, the stack's parallelism).
    durations = sum(b - a for a, b in spans.values())
    waits, scheduler, executor = [], [], []
    per_task: dict[str, dict] = {}
    for t in done:
        key = (t["task_id"], t.get("map_index", -1))
        parents = [span for (task, index), span in spans.items() if task in upstream.get(t["task_id"], [])
                   and (index == key[1] or index < 0 or key[1] < 0)]
        ready = max((span[1] for span in parents), default=0.0)
        start, stop = spans[key]
        queued = offset(t.get("queued_when"))
        waits.append(start - ready)
        if queued is not None:
            scheduler.append(max(0.0, queued - ready))
            executor.append(start - max(queued, ready))
        row = per_task.setdefault(t["task_id"], {"instances": 0, "duration_s": 0.0, "wait_s": 0.0})
        row["instances"] += 1
        row["duration_s"] += stop - start
        row["wait_s"] += start - ready

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 3) if values else None

    return {
        "wall_s": round(wall, 3), "task_instances": len(done),
        "no_task_running_s": round(wall - covered, 3), "two_or_more_running_s": round(durations - covered, 3),
        "task_durations_sum_s": round(durations, 3),
        "wait_after_upstream_s": {"sum": round(sum(waits), 3), "mean": mean(waits), "max": round(max(waits, default=0), 3)},
        "ready_to_queued_s (scheduler)": {"sum": round(sum(scheduler), 3), "mean": mean(scheduler)},
        "queued_to_started_s (executor, task process start)": {"sum": round(sum(executor), 3), "mean": mean(executor)},
        "per_task": {task: {"instances": row["instances"], "mean_duration_s": round(row["duration_s"] / row["instances"], 3),
                            "mean_wait_after_upstream_s": round(row["wait_s"] / row["instances"], 3)}
                     for task, row in per_task.items()},
    }


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\.\d+)(Z|\+00:00)?")


def exit_lags(log_lines, ti_ids: set[str]) -> dict:
    """Seconds between each task's return and its supervisor seeing the task process finished (executor slot free).

    From the LocalExecutor's log (the scheduler's): the task's ``Done. Returned value``
    line (its ``ti_id``) and the supervisor's ``Workload finished`` line (``workload_id``).
    The supervisor checks for its child's exit between waits of up to
    ``[workers] min_heartbeat_interval`` seconds, so a task process that is still exiting
    when its sockets close keeps the slot until the next check.
    """
    done: dict[str, datetime] = {}
    finished: dict[str, datetime] = {}
    for line in log_lines:
        found = _LOG_TIME.match(line)
        if not found:
            continue
        if "Done. Returned value" in line:
            ident, into = re.search(r"\bti_id=([0-9a-f-]+)", line), done
        elif "Workload finished" in line:
            ident, into = re.search(r"\bworkload_id=([0-9a-f-]+)", line), finished
        else:
            continue
        if ident and ident.group(1) in ti_ids:
            into[ident.group(1)] = datetime.fromisoformat(found.group(1).replace(" ", "T")).replace(tzinfo=UTC)
    lags = sorted((finished[key] - done[key]).total_seconds() for key in done if key in finished)
    return {"task_instances": len(lags), "sum_s": round(sum(lags), 3),
            "over_1s": sum(lag > 1 for lag in lags), "max_s": round(max(lags, default=0.0), 3),
            "median_s": round(lags[len(lags) // 2], 3) if lags else None}


def airflow_figures(run: dict, tasks: list[dict], downstream: dict[str, list[str]], metrics: dict,
                    posted_to_done_s: float) -> dict:
    """The measured DAG run against its components' own seconds (``metrics.json``)."""
    spent = timeline(run, tasks, downstream)
    wall = spent["wall_s"]
    steps = _breakdown(metrics, {})
    components = sum(steps.values())
    count = spent["task_instances"]
    queued_to_end = (_time(run["end_date"]) - _time(run["queued_at"])).total_seconds() if run.get("queued_at") else None
    return {"wall_s": wall, "photos": metrics["photos"], "faces": metrics["faces"], "shards": metrics["shards"],
            "photos_per_hour": round(metrics["photos"] / wall * 3600),
            "queued_to_end_s": round(queued_to_end, 3) if queued_to_end is not None else None,
            "posted_to_observed_end_s (1 s polls)": round(posted_to_done_s, 3),
            "steps_s": steps, "component_s": round(components, 3), "outside_components_s": round(wall - components, 3),
            "overhead_share": round(1 - components / wall, 3), "task_instances": count,
            "outside_components_per_task_s": round((wall - components) / count, 3) if count else None,
            "in_tasks_outside_components_s (task process, DAG parse, XCom, waiting for the step server's turn)":
                round(spent["task_durations_sum_s"] - components, 3),
            "timeline": spent}


def airflow_settings(stack: Stack, extra: dict[str, str] | None) -> dict[str, str]:
    """The stack's Airflow settings that set its pace (scheduler, workers, slots); no key or password among them."""
    from collections import defaultdict

    from components.bench.local_stack import stack_module

    settings = {**stack_module().airflow_env(stack.config, defaultdict(str)), **(extra or {})}
    return {key: value for key, value in sorted(settings.items())
            if key.startswith(("AIRFLOW__SCHEDULER__", "AIRFLOW__WORKERS__", "AIRFLOW__DAG_PROCESSOR__"))
            or key in ("AIRFLOW__CORE__PARALLELISM", "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG")}


def _upload(stack: Stack, folder: Path, prefix: str) -> int:
    """``faces upload``'s copy of a folder to the stack's S3, with the stack's keys; the number of photos there."""
    from components.bench.ingest import _environment
    from components.storage import open_storage, sync_folder

    with _environment(**stack.client):
        result = sync_folder(folder, open_storage(f"s3://{stack.config.bucket}"), prefix, progress=False, workers=8)
    return len(result.uploaded) + len(result.skipped)


def _run_dag(stack: Stack, run_id: str, conf: dict, timeout_s: float) -> tuple[dict, float]:
    posted = time.perf_counter()
    stack.trigger(DAG_ID, run_id, conf)
    run = stack.wait_for_run(DAG_ID, run_id, timeout_s, poll_s=1.0)
    observed = time.perf_counter() - posted
    if run["state"] != "success":
        states = {(t["task_id"], t.get("map_index")): t["state"] for t in stack.task_instances(DAG_ID, run_id)}
        tails = stack.failed_task_logs(DAG_ID, run_id, states)
        raise StackRunError(f"{DAG_ID} run {run_id} ended {run['state']!r}: {states}\n"
                            + "\n".join(f"--- {name}\n{tail}" for name, tail in tails.items()))
    return run, observed


def _batch_metrics(stack: Stack, source: str) -> dict:
    """The metrics.json the DAG run wrote for ``source`` (its batch id: the hash the trigger form's default gives)."""
    from components.bench.ingest import _environment
    from components.workflow import workspace as ws
    from components.workflow.ingest import batch_id_of, is_image_key

    with _environment(**stack.client):
        keys = sorted(key for key in ws.open_storage(source).list() if is_image_key(key))
        uri = ws.join(stack.client["FACES_WORK_URI"], "batches", batch_id_of(source, keys), "metrics.json")
        return ws.read_json(uri)


def _direct_env(stack: Stack, root: Path, tag: str) -> dict[str, str]:
    """The stack's workers' environment with a fresh work prefix and a fresh store of the same kind."""
    env = dict(stack.client)
    bucket = stack.config.bucket
    if not env["FACES_STORE_URL"].startswith("sqlite:"):
        raise StackRunError(f"the stack's store is not SQLite ({env['FACES_STORE_URL'].split(':')[0]}): "
                            "the direct path needs a fresh store of the same kind")
    root.mkdir(parents=True, exist_ok=True)
    env.update({"FACES_WORK_URI": f"s3://{bucket}/bench-direct-{tag}/work",
                "FACES_STORE_URL": f"sqlite:///{root / 'faces.db'}",
                "FACES_QUARANTINE_URI": f"s3://{bucket}/bench-direct-{tag}/quarantine"})
    if stack.env.get("FACES_PARAMS"):
        env["FACES_PARAMS"] = stack.env["FACES_PARAMS"]
    return env


def _previous_runs(out: Path) -> list[dict]:
    try:
        previous = json.loads(out.read_text())
    except (OSError, ValueError):
        return []
    entry = previous.get("results", {}).get("lfw", {})
    head = {"date": previous.get("date"), "command": previous.get("command"), "commit": previous.get("commit"),
            "params": previous.get("params"), "uptime_before": previous.get("machine", {}).get("uptime_before"),
            "uptime_after": previous.get("machine", {}).get("uptime_after"),
            **{key: entry.get(key) for key in ("airflow_throughput_over_direct", "goal_met")},
            "airflow_photos_per_hour": entry.get("airflow", {}).get("photos_per_hour"),
            "direct_photos_per_hour": entry.get("workflow_direct", {}).get("photos_per_hour"),
            "airflow_task_instances": entry.get("airflow", {}).get("task_instances"),
            "outside_components_per_task_s": entry.get("airflow", {}).get("outside_components_per_task_s")}
    return [head] + previous.get("previous_runs", [])


def run_benchmark(out: Path, *, lfw_photos: int = 1000, warmup_photos: int = 8, shard_size: int | None = None,
                  stack_dir: Path | None = None, stack_env: dict[str, str] | None = None, timeout_s: float = 1800,
                  command: str = "faces bench ingest-stack") -> dict:
    """Measure the Airflow path on the stack and the direct path with the stack's environment; write ``out``."""
    from components.settings import load_settings
    from components.workflow import __version__ as workflow_version
    from components.workflow import warm

    out = Path(out)
    previous_runs = _previous_runs(out)
    uptimes = {"before": _uptime()}
    began = time.perf_counter()
    batch, warmup = lfw_batch(lfw_photos), lfw_batch(warmup_photos, seed=99)
    tag = uuid.uuid4().hex[:8]
    phases: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="faces-bench-ingest-stack-") as tmp:
        tmp = Path(tmp)
        started_here = stack_dir is None
        if started_here:
            env = stack_environment(tmp / "stack")
            env["FACES_WARM_DIR"] = str(tmp / "warm")  # the step servers the stack's tasks start: stopped below
            env.update(stack_env or {})
        else:
            env = {**os.environ, "STACK_DIR": str(Path(stack_dir).resolve()), **(stack_env or {})}
        try:
            if started_here:
                t0 = time.perf_counter()
                done = run_stack("up", env, timeout=600)
                if done.returncode != 0:
                    raise StackRunError(f"stack up failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                phases["stack_up_s"] = round(time.perf_counter() - t0, 1)
                uptimes["after_stack_up"] = _uptime()
            stack = Stack(env)
            bucket = stack.config.bucket
            prefix = f"incoming/bench-{tag}"
            t0 = time.perf_counter()
            photos = _upload(stack, batch, f"{prefix}/lfw-{lfw_photos}")
            _upload(stack, warmup, f"{prefix}/warmup")
            phases["upload_s"] = round(time.perf_counter() - t0, 1)
            source, warmup_source = f"s3://{bucket}/{prefix}/lfw-{lfw_photos}", f"s3://{bucket}/{prefix}/warmup"
            extra = {} if shard_size is None else {"shard_size": shard_size}
            uptimes["after_upload"] = _uptime()

            warm_run, warm_observed = _run_dag(stack, f"bench-warmup-{tag}", {"batch": warmup_source, **extra}, timeout_s)
            warmup_wall = (_time(warm_run["end_date"]) - _time(warm_run["start_date"])).total_seconds()
            uptimes["after_airflow_warmup"] = _uptime()

            run_id = f"bench-{tag}"
            run, observed = _run_dag(stack, run_id, {"batch": source, **extra}, timeout_s)
            uptimes["after_airflow"] = _uptime()
            tasks = stack.task_instances(DAG_ID, run_id)
            downstream = {task["task_id"]: task.get("downstream_task_ids", [])
                          for task in stack.api("GET", f"dags/{DAG_ID}/tasks")["tasks"]}
            airflow = airflow_figures(run, tasks, downstream, _batch_metrics(stack, source), observed)
            airflow["warmup_run"] = {"photos": warmup_photos, "wall_s": round(warmup_wall, 3),
                                     "posted_to_observed_end_s": round(warm_observed, 3),
                                     "note": "first run on the stack: the step server starts and loads TensorFlow, "
                                             "the detector, the embedder, Great Expectations and MLflow"}
            airflow["run_id"] = run_id
            scheduler_log = stack.config.run_dir / "logs" / "airflow-scheduler.log"
            if scheduler_log.exists():
                with scheduler_log.open(errors="replace") as lines:
                    airflow["task_exit_lag (task returned -> supervisor frees the slot)"] = exit_lags(
                        lines, {task["id"] for task in tasks})

            direct_env = _direct_env(stack, tmp / "direct", tag)
            settings = load_settings(Path(direct_env["FACES_PARAMS"])) if "FACES_PARAMS" in direct_env else load_settings()
            direct = run_direct(source, tmp / "direct", settings, shard_size, warmup_source, env=direct_env,
                                folder_labels=False)
            uptimes["after_direct"] = _uptime()
        finally:
            if started_here:
                done = run_stack("down", env, timeout=300)
                if done.returncode != 0:
                    print(f"stack down failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
                if (tmp / "warm").is_dir():
                    warm.stop(tmp / "warm")
    ratio = direct["wall_s"] / airflow["wall_s"]  # same photos: throughput ratio = inverse wall ratio
    uptimes["after"] = _uptime()
    entry = {
        "photos": photos, "folder": str(batch.relative_to(PROJECT_ROOT)), "source": "the stack's S3 (uploaded)",
        "shard_size": shard_size or settings.workflow.shard_size,
        "workflow_direct": {**direct, "environment": "the stack workers' env file: S3 work area (fresh prefix), "
                                                     "MLflow server, fresh SQLite store, same parameters file"},
        "airflow": airflow,
        "airflow_throughput_over_direct": round(ratio, 3), "goal_ratio": GOAL_RATIO, "goal_met": ratio >= GOAL_RATIO,
        "load_1min": {phase: load_1min(line) for phase, line in uptimes.items()},
    }
    summary = {
        "benchmark": "ingest-stack",
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "uptime_before": uptimes["before"], "uptime_after": uptimes["after"],
                    "uptime_by_phase": uptimes,
                    "note": "shared machine: see the load averages; the stack's idle servers run during both paths"},
        "stack": {"started_here": started_here, "executor": "LocalExecutor",
                  "parallelism": stack.config.airflow_parallelism,
                  "airflow_settings": airflow_settings(stack, stack_env),
                  "extra_env": sorted(stack_env or {}), **({"extra_env_values": stack_env} if stack_env else {})},
        "versions": {"workflow": workflow_version},
        "commit": _commit(),
        "params": {"shard_size": shard_size, "shard_size_used": entry["shard_size"],
                   "detect.mode": settings.detect.mode, "warmup_photos": warmup_photos},
        "phases_s": phases,
        "results": {"lfw": entry},
        "previous_runs": previous_runs,
        "seconds": round(time.perf_counter() - began, 1),
    }
    save_result(out, summary)
    return summary
