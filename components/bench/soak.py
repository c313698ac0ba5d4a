"""``faces bench soak``: the BentoML service under steady load for minutes, while batches are ingested.

32 closed-loop clients (half on ``/verify`` with LFW pairs, half on ``/identify`` with
LFW photos) hammer a real ``bentoml serve`` for ``--minutes`` (10 by default) while the
``face_ingest`` steps (``python -m components.workflow ingest``) add batch after batch of
other LFW people to the identity store the service answers from. Recorded: every request
that failed (HTTP status or connection error; the goal is zero), latency percentiles and
throughput per endpoint, the service's memory (resident set of its whole process tree,
sampled every few seconds: first sample after warm-up, last, peak, growth per minute over
the second half), the batches and photos ingested, and the machine's load average
(before, every sample, after).

The identity store is PostgreSQL when one is reachable on 127.0.0.1:5432 (a fresh
database, dropped afterwards; the production store), else SQLite.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from components.bench import save_result
from components.bench.serve import (
    STORE_PHOTOS,
    _files,
    lfw_pairs,
    lfw_photo,
    load_average,
    load_level,
    machine,
    store_people,
)
from components.settings import PROJECT_ROOT, Settings

LFW_PEOPLE = PROJECT_ROOT / "data" / "lfw" / "people.txt"


def tree_rss_mb(pid: int) -> float | None:
    """Resident memory of a process and all its descendants, MiB (None once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return round(total / 2**20, 1)


def ingest_people(exclude: set[str], batches: int, per_batch: int) -> list[list[Path]]:
    """Batches of LFW photos of people outside the store (four photos each), deterministic."""
    people = []
    for line in LFW_PEOPLE.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit() and int(fields[1]) >= 4 and fields[0] not in exclude:
            people.append(fields[0])
    people = sorted(set(people))
    photos = [lfw_photo(person, number) for person in people for number in range(1, 5)]
    photos = [photo for photo in photos if photo.exists()]
    return [photos[start : start + per_batch] for start in range(0, batches * per_batch, per_batch)]


def _postgres_store() -> tuple[str | None, callable]:
    """A fresh PostgreSQL database for the store, and a function that drops it; (None, no-op) without a server."""
    try:
        import psycopg2

        admin = psycopg2.connect(dbname="postgres", host="127.0.0.1", port=5432, user="postgres", connect_timeout=3)
    except Exception:  # noqa: BLE001 - no server: SQLite instead
        return None, lambda: None
    admin.autocommit = True
    name = f"faces_soak_{secrets.token_hex(4)}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}", drop


def run_soak(settings: Settings, out: Path, *, minutes: float = 10.0, clients: int = 32, sample_s: float = 10.0,
             batch_photos: int = 24, command: str = "") -> dict:
    """Run the soak, write ``out`` (JSON) and return the result."""
    from components.serving.launch import free_port, start_server, stop_server, wait_ready

    duration_s = minutes * 60.0
    pairs = lfw_pairs(40)
    people = store_people()
    queries = [lfw_photo(person, number) for person in people for number in (STORE_PHOTOS + 1, STORE_PHOTOS + 2)]
    batches = ingest_people(set(people), batches=200, per_batch=batch_photos)
    result: dict = {"benchmark": "soak", "command": command, "machine": machine(), "load_average_before": load_average()}
    store_url, drop_store = _postgres_store()
    with tempfile.TemporaryDirectory(prefix="faces-bench-soak-") as tmp:
        work = Path(tmp)
        key = secrets.token_hex(16)
        env = {**os.environ, "FACES_API_KEY": key, "BENTOML_HOME": str(work / "bentoml"), "TF_CPP_MIN_LOG_LEVEL": "2",
               "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(PROJECT_ROOT),
               "FACES_WORK_URI": str(work / "workflow"), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
               "FACES_QUARANTINE_URI": str(work / "quarantine"), "FACES_PARAMS": _params_file(work)}
        try:
            env["FACES_STORE_URL"] = _build_store(work, people, env, store_url)
            result["store"] = "postgresql" if store_url else "sqlite"
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            log = work / "serve.log"
            process = start_server(env, port, log)
            try:
                wait_ready(url, process, log)
                verify_files, identify_files = _files(pairs, queries)
                for endpoint, bodies in (("verify", verify_files), ("identify", identify_files)):
                    load_level(url, key, f"/{endpoint}", bodies, 1, 5.0)  # warm up
                result.update(_soak(url, key, process.pid, env, work, verify_files, identify_files, batches,
                                    duration_s, clients, sample_s))
                result["service_exit"] = process.poll()  # None: still running at the end
            finally:
                stop_server(process)
        finally:
            drop_store()
    result["load_average_after"] = load_average()
    result["setup"] = {"minutes": minutes, "clients": clients, "clients_verify": clients // 2,
                       "clients_identify": clients - clients // 2, "sample_every_s": sample_s,
                       "ingest_batch_photos": batch_photos, "store_people": len(people),
                       "verify_pairs": len(pairs), "identify_photos": len(queries)}
    errors = result["verify"]["errors"] + result["identify"]["errors"]
    result["goals"] = {"errors": errors, "zero_errors_met": errors == 0,
                       "ingest_failures": result["ingest"]["failed"],
                       "memory_growth_mb": result["memory"]["growth_mb"]}
    save_result(out, result)
    return result


def _params_file(work: Path) -> str:
    """The run's params.yaml with Data Docs of rejected batches kept in the soak's own folder."""
    import yaml

    params = yaml.safe_load(Path(os.environ.get("FACES_PARAMS") or PROJECT_ROOT / "params.yaml").read_text())
    params.setdefault("validate", {})["docs_dir"] = str(work / "validation")
    base = params.setdefault("base", {})
    base["models_dir"] = str(PROJECT_ROOT / base.get("models_dir", "models"))  # relative paths start at the params file
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def _build_store(work: Path, people: list[str], env: dict, store_url: str | None) -> str:
    """``faces run`` over the store people's first photos into the store (PostgreSQL or SQLite)."""
    folder = work / "people"
    for person in people:
        (folder / person).mkdir(parents=True, exist_ok=True)
        for number in range(1, STORE_PHOTOS + 1):
            os.symlink(lfw_photo(person, number), folder / person / lfw_photo(person, number).name)
    url = store_url or f"sqlite:///{work / 'store' / 'faces.db'}"
    done = subprocess.run([sys.executable, "-m", "components.cli", "run", "--input", str(folder), "--out",
                           str(work / "store"), "--db", url, "--folder-labels", "--no-progress"], cwd=PROJECT_ROOT,
                          env={**env, "FACES_CROPS_ROOT": str(work / "store")}, capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"building the identity store failed:\n{done.stderr[-2000:]}")
    return url


def _soak(url, key, pid, env, work, verify_files, identify_files, batches, duration_s, clients, sample_s) -> dict:
    stop = threading.Event()
    samples: list[dict] = []
    ingest = {"batches": 0, "photos_new": 0, "failed": 0, "failures": [], "seconds": []}
    started = time.monotonic()

    def sample() -> None:
        while True:
            samples.append({"t_s": round(time.monotonic() - started, 1), "rss_mb": tree_rss_mb(pid),
                            "load_average": load_average()})
            if stop.wait(sample_s):
                return

    def ingest_loop() -> None:
        for number, photos in enumerate(batches):
            if stop.is_set():
                return
            folder = work / "batches" / f"b{number:03d}"
            for photo in photos:
                (folder / photo.parent.name).mkdir(parents=True, exist_ok=True)
                os.symlink(photo, folder / photo.parent.name / photo.name)
            began = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "components.workflow", "ingest", "--batch", str(folder),
                                   "--batch-id", f"soak-{number:03d}", "--folder-labels"], cwd=PROJECT_ROOT, env=env,
                                  capture_output=True, text=True, timeout=1800)
            ingest["seconds"].append(round(time.monotonic() - began, 1))
            if done.returncode != 0:
                ingest["failed"] += 1
                ingest["failures"].append(done.stderr[-500:])
                continue
            ingest["batches"] += 1
            try:
                ingest["photos_new"] += int(json.loads(done.stdout).get("photos_new", 0))
            except (ValueError, AttributeError):
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    ingester = threading.Thread(target=ingest_loop, daemon=True)
    sampler.start()
    ingester.start()
    answers: dict = {}

    def load(endpoint: str, bodies: list, count: int) -> None:
        answers[endpoint] = load_level(url, key, f"/{endpoint}", bodies, count, duration_s)

    loaders = [threading.Thread(target=load, args=("verify", verify_files, clients // 2)),
               threading.Thread(target=load, args=("identify", identify_files, clients - clients // 2))]
    for thread in loaders:
        thread.start()
    for thread in loaders:
        thread.join()
    stop.set()
    sampler.join(timeout=30)
    ingester.join(timeout=1800)  # the batch in flight finishes (nothing is killed midway)
    loads = [row["load_average"][0] for row in samples]
    return {
        "verify": answers["verify"], "identify": answers["identify"], "memory": memory_summary(samples, duration_s),
        "load_average_1min": {"mean": round(float(np.mean(loads)), 2) if loads else None,
                              "max": max(loads) if loads else None},
        "ingest": ingest, "samples": samples,
    }


def memory_summary(samples: list[dict], duration_s: float) -> dict:
    """The service's memory over the soak: first sample (the clients just started), after the first
    minute (every client's requests in flight), last, peak; growth from each, and the slope over the
    second half (MiB per minute)."""
    rows = [row for row in samples if row["rss_mb"] is not None]
    if not rows:
        return {"first_mb": None, "last_mb": None, "peak_mb": None, "growth_mb": None}
    memory = [row["rss_mb"] for row in rows]
    settled = next((row["rss_mb"] for row in rows if row["t_s"] >= 60), None)
    half = [row for row in rows if row["t_s"] >= duration_s / 2]
    slope = None
    if len(half) >= 3:
        t = np.array([row["t_s"] for row in half]) / 60.0
        slope = round(float(np.polyfit(t, np.array([row["rss_mb"] for row in half]), 1)[0]), 2)
    return {"first_mb": memory[0], "after_first_minute_mb": settled, "last_mb": memory[-1], "peak_mb": max(memory),
            "growth_mb": round(memory[-1] - memory[0], 1),
            "growth_mb_after_first_minute": None if settled is None else round(memory[-1] - settled, 1),
            "growth_mb_per_min_second_half": slope}


def main(args, settings: Settings) -> int:
    """Entry point of ``faces bench soak``."""
    command = "faces " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("faces") else " ".join(sys.argv)
    result = run_soak(settings, Path(args.out), minutes=args.minutes, clients=args.clients, command=command)
    summary = {key: result[key] for key in ("goals", "memory", "load_average_1min", "ingest")}
    summary["ingest"] = {k: v for k, v in summary["ingest"].items() if k != "seconds"}
    summary["verify"] = {k: result["verify"][k] for k in ("requests", "errors", "requests_per_s", "p50_ms", "p99_ms")}
    summary["identify"] = {k: result["identify"][k] for k in ("requests", "errors", "requests_per_s", "p50_ms", "p99_ms")}
    print(json.dumps(summary, indent=2))
    print(f"written: {args.out}")
    return 0 if result["goals"]["zero_errors_met"] and not result["ingest"]["failed"] else 1
