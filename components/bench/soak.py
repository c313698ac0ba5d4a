"""``faces bench soak``: the BentoML service under steady load for minutes, while batches are
ingested and a new model version is promoted.

32 closed-loop clients (half on ``/verify`` with LFW pairs, half on ``/identify`` with
LFW photos) hammer a real ``bentoml serve`` for ``--minutes`` (10 by default) while the
``face_ingest`` steps (``python -m components.workflow ingest``) add batch after batch of
other LFW people to the identity store the service answers from. Half way (``--promote-at``),
a new model version goes into service the way a user brings one: registered with its
thresholds, promoted (the registry's ``champion`` alias), the store re-embedded with it
(``faces reembed``: one switch, the store never holds two models' embeddings), then the
service told (``POST /reload``, as the face_reembed DAG does), all while the clients and
the ingest keep running. The new version is the champion with perturbed weights
(:func:`components.bench.reembed.perturbed_copy`): other weights, so another model version.

Recorded: every request that failed (HTTP status or connection error; the goal is zero),
before, during and after the switch apart, and which model version answered each; latency
percentiles and throughput per endpoint; when each promotion step ended; the service's
memory (resident set of its whole process tree, sampled every few seconds: first sample
after warm-up, last, peak, growth per minute over the second half); the batches and photos
ingested and the model each batch was stored with; the model versions the store holds at
the end (one); and the machine's load average (before, every sample, after).

The identity store is PostgreSQL when one is reachable on 127.0.0.1:5432 (a fresh
database, dropped afterwards; the production store), else SQLite. The registry is an
MLflow SQLite store in the soak's temporary folder, whose champion (version 1, the
project's model) the store is built with.
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
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
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
             batch_photos: int = 24, promote: bool = True, promote_at: float | None = None, command: str = "") -> dict:
    """Run the soak, write ``out`` (JSON) and return the result.

    Args:
        promote: bring a new model version into service during the soak (:func:`promote_new_model`).
        promote_at: minutes into the soak when the promotion starts (default: half way).
    """
    from components.embed.thresholds import Thresholds
    from components.serving.launch import free_port, start_server, stop_server, wait_ready

    duration_s = minutes * 60.0
    promote_at_s = (minutes / 2.0 if promote_at is None else float(promote_at)) * 60.0 if promote else None
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
               "FACES_QUARANTINE_URI": str(work / "quarantine"), "FACES_PARAMS": _params_file(work),
               # `faces run` stores crop paths relative to its output folder: the re-embed, and the
               # service re-embedding medoids while it still serves the old model, read them there.
               "FACES_CROPS_ROOT": str(work / "store")}
        thresholds = Thresholds.from_settings(settings)
        # This process registers and promotes in the soak's own registry (the children get it from env).
        with _environment(MLFLOW_TRACKING_URI=env["MLFLOW_TRACKING_URI"]):
            try:
                if promote:
                    # The champion first: `faces run` builds the store with it, and serving follows the store.
                    result["champion_before"] = _register(settings.model_path, thresholds, "the project's model",
                                                          promote_reason="faces bench soak: the model in service")
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
                    promotion = None
                    if promote:
                        from components.bench.reembed import perturbed_copy

                        new_model = perturbed_copy(settings.model_path, work / "new-model.keras")
                        promotion = partial(promote_new_model, url, key, env, work, new_model, thresholds)
                    result.update(_soak(url, key, process.pid, env, work, verify_files, identify_files, batches,
                                        duration_s, clients, sample_s, promotion, promote_at_s))
                    result["service_exit"] = process.poll()  # None: still running at the end
                finally:
                    stop_server(process)
                result["store_models_at_end"] = _embedded_versions(env["FACES_STORE_URL"])
            finally:
                drop_store()
    result["load_average_after"] = load_average()
    result["setup"] = {"minutes": minutes, "clients": clients, "clients_verify": clients // 2,
                       "clients_identify": clients - clients // 2, "sample_every_s": sample_s,
                       "ingest_batch_photos": batch_photos, "store_people": len(people),
                       "verify_pairs": len(pairs), "identify_photos": len(queries),
                       "promote_at_minutes": None if promote_at_s is None else round(promote_at_s / 60.0, 2)}
    errors = result["verify"]["errors"] + result["identify"]["errors"]
    result["goals"] = {"errors": errors, "zero_errors_met": errors == 0,
                       "ingest_failures": result["ingest"]["failed"],
                       "memory_growth_mb": result["memory"]["growth_mb"],
                       "store_single_model": len(result["store_models_at_end"]) <= 1}
    if promote:
        result["goals"]["promotion"] = promotion_goals(result["promotion"], result["switch"])
    save_result(out, result)
    return result


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables of this process for a block, then put back what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _register(model_file: Path, thresholds, made_of: str, *, promote_reason: str) -> dict:
    """Register a model file with its thresholds, then promote it (the registry's own functions)."""
    from components.track import registry, start_run

    with start_run("faces-bench-soak", "register") as run:
        version = registry.register_embedder(model_file, run.info.run_id, tags={"made_of": made_of},
                                             thresholds=thresholds)
    return registry.promote(version, reason=promote_reason, by="faces bench soak")


def promote_new_model(url: str, key: str, env: dict, work: Path, model_file: Path, thresholds,
                      clock: Callable[[], float]) -> dict:
    """Bring a new model version into service as a user would, while the service is under load.

    1. register it with its thresholds and promote it (``champion``): the registry changes,
       serving and ingest still follow the store, which holds the old model's embeddings;
    2. ``faces reembed``: the store's crops embedded with the new model, then the switch
       (one transaction; faces ingested meanwhile are caught up before it);
    3. ``POST /reload`` (:func:`components.workflow.retrain.reload_serving`, what the
       face_reembed DAG calls after a switch): the service swaps in the store's new model
       (its poll would do it within ``serve.poll_s``).

    The new model's thresholds are the champion's: its weights are the champion's scaled by
    2%, and calibrating it on LFW would take longer than the soak.

    Returns:
        When each step ended (``clock`` seconds), the registry versions, the re-embed's
        report and the service's answer to the reload.
    """
    from components.workflow.retrain import reload_serving

    record: dict = {"started_s": round(clock(), 1), "steps_ended_s": {}}
    promoted = _register(model_file, thresholds, "the champion with perturbed weights (components.bench.reembed)",
                         promote_reason="faces bench soak: promotion under load")
    record["steps_ended_s"]["register_and_promote"] = round(clock(), 1)
    record["registry_version_before"], record["registry_version_after"] = promoted["previous"], promoted["version"]
    done = subprocess.run([sys.executable, "-m", "components.cli", "reembed", "--db", env["FACES_STORE_URL"],
                           "--no-progress"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    record["steps_ended_s"]["reembed"] = round(clock(), 1)
    if done.returncode != 0:
        raise RuntimeError(f"faces reembed failed: {done.stderr[-1000:]}")
    report = json.loads(done.stdout)
    (work / "reembed.json").write_text(done.stdout)
    record["reembed"] = {key_: report.get(key_) for key_ in ("changed", "faces", "seconds", "faces_per_second")}
    record["reembed"]["incoherent_identities"] = len((report.get("switch") or {}).get("incoherent", []))
    record["model_version_before"] = (report.get("before") or {}).get("model_version")
    record["model_version_after"] = report["model"]["model_version"]
    since = report["model"].get("since")  # when the re-embed switched the store (whole seconds)
    if since:
        record["store_switched_s"] = round(clock() - (time.time() - datetime.fromisoformat(since).timestamp()), 1)
    reloaded = reload_serving(str(work / "reembed.json"), url=url, api_key=key, force=True)
    record["steps_ended_s"]["reload"] = round(clock(), 1)
    answer = reloaded.get("response") if isinstance(reloaded.get("response"), dict) else {}
    record["reload"] = {"status": reloaded.get("status"), "changed": answer.get("changed"),
                        "registry_version": answer.get("registry_version"), "model_version": answer.get("model_version")}
    record["seconds"] = round(clock() - record["started_s"], 1)
    return record


def switch_phases(events: list[tuple], promotion: dict) -> dict:
    """Requests before, during and after a promotion, and which model answered them.

    Args:
        events: one per request, ``(started_s, finished_s, endpoint, outcome, registry_version,
            model_version)``; outcome None for an answer, else what failed.
        promotion: what :func:`promote_new_model` returned (``started_s``, ``steps_ended_s``).

    Returns:
        Per phase (``before``: finished before the promotion started; ``during``: until the
        service answered the reload; ``after``), requests, errors by kind and answers per
        registry version; then when the new model first answered, when the old one last did,
        and ``old_model_after_reload``: answers from the old model to requests sent after
        the reload was answered (0: every new request is served by the new model).
    """
    began = promotion.get("started_s")
    reloaded = (promotion.get("steps_ended_s") or {}).get("reload")
    before_version = promotion.get("model_version_before")
    after_version = promotion.get("model_version_after")
    phases = {name: {"requests": 0, "errors": 0, "error_kinds": Counter(), "registry_versions": Counter()}
              for name in ("before", "during", "after")}
    first_new = last_old = None
    old_after = 0
    for started, finished, _endpoint, outcome, registry_version, model_version in events:
        if began is None or finished < began:
            phase = phases["before"]
        elif reloaded is None or finished <= reloaded:
            phase = phases["during"]
        else:
            phase = phases["after"]
        phase["requests"] += 1
        if outcome is not None:
            phase["errors"] += 1
            phase["error_kinds"][outcome] += 1
            continue
        phase["registry_versions"][str(registry_version)] += 1
        if model_version == after_version and after_version != before_version:
            first_new = finished if first_new is None else min(first_new, finished)
        if model_version == before_version:
            last_old = finished if last_old is None else max(last_old, finished)
            if reloaded is not None and started > reloaded:
                old_after += 1
    for phase in phases.values():
        phase["error_kinds"] = dict(phase["error_kinds"])
        phase["registry_versions"] = dict(sorted(phase["registry_versions"].items()))
    return {**phases, "new_model_first_answered_s": first_new, "old_model_last_answered_s": last_old,
            "old_model_after_reload": old_after}


def promotion_goals(promotion: dict, switch: dict) -> dict:
    """Did the promotion happen, how many requests failed around it, and does the new model answer now?"""
    done = bool(promotion.get("steps_ended_s", {}).get("reload") is not None and not promotion.get("error"))
    after = str(promotion.get("registry_version_after"))
    return {"done": done, "error": promotion.get("error"),
            "errors_before": switch["before"]["errors"], "errors_during": switch["during"]["errors"],
            "errors_after": switch["after"]["errors"],
            "served_before": sorted(switch["before"]["registry_versions"]),
            "served_after": sorted(switch["after"]["registry_versions"]),
            "new_model_serves_after_reload": done and switch["after"]["registry_versions"].get(after, 0) > 0
            and switch["old_model_after_reload"] == 0}


def _embedded_versions(store_url: str) -> dict[str, int]:
    """Model version -> faces embedded by it, in the store as the soak left it (one version: nothing mixed)."""
    from components.identities import IdentityStore

    store = IdentityStore(store_url)
    try:
        return store.embedded_versions()
    finally:
        store.engine.dispose()


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


def _soak(url, key, pid, env, work, verify_files, identify_files, batches, duration_s, clients, sample_s,
          promotion: Callable[[Callable[[], float]], dict] | None = None, promote_at_s: float | None = None) -> dict:
    stop = threading.Event()
    samples: list[dict] = []
    ingest = {"batches": 0, "photos_new": 0, "failed": 0, "failures": [], "seconds": [], "stored_with": []}
    events: list[tuple] = []  # one per request: (started_s, finished_s, endpoint, outcome, registry version, model version)
    promoted: dict = {}
    started = time.monotonic()

    def clock() -> float:
        return time.monotonic() - started

    def sample() -> None:
        while True:
            samples.append({"t_s": round(clock(), 1), "rss_mb": tree_rss_mb(pid), "load_average": load_average()})
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
                metrics = json.loads(done.stdout)
            except ValueError:
                continue
            ingest["photos_new"] += int(metrics.get("photos_new", 0))
            # Which model the batch's faces were stored with, and when it ended: across the switch, the new one.
            ingest["stored_with"].append({"ended_s": round(clock(), 1), "model_version": metrics.get("model_version")})

    def promote_when_due() -> None:
        if stop.wait(promote_at_s):
            return
        try:
            promoted.update(promotion(clock))
        except Exception as error:  # noqa: BLE001 - recorded: the soak's goals say the promotion failed
            promoted["error"] = f"{type(error).__name__}: {error}"[-2000:]

    def on_answer(endpoint: str):
        def note(took: float, outcome: str | None, response) -> None:
            finished = clock()
            body: dict = {}
            if response is not None:
                try:
                    body = response.json()
                except ValueError:
                    body = {}
            if outcome is not None and isinstance(body.get("error"), dict):
                outcome = f"{outcome} {body['error'].get('code')}"  # the service's reason, e.g. model_changing
            events.append((round(finished - took, 3), round(finished, 3), endpoint, outcome,
                           body.get("registry_version"), body.get("model_version")))
        return note

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=ingest_loop, daemon=True)]
    if promotion is not None and promote_at_s is not None:
        threads.append(threading.Thread(target=promote_when_due, daemon=True))
    for thread in threads:
        thread.start()
    answers: dict = {}

    def load(endpoint: str, bodies: list, count: int) -> None:
        answers[endpoint] = load_level(url, key, f"/{endpoint}", bodies, count, duration_s, on_answer(endpoint))

    loaders = [threading.Thread(target=load, args=("verify", verify_files, clients // 2)),
               threading.Thread(target=load, args=("identify", identify_files, clients - clients // 2))]
    for thread in loaders:
        thread.start()
    for thread in loaders:
        thread.join()
    stop.set()
    sampler, ingester, *promoter = threads
    sampler.join(timeout=30)
    for thread in promoter:
        thread.join(timeout=1800)  # a promotion under way finishes (a re-embed is never left half done)
    ingester.join(timeout=1800)  # the batch in flight finishes (nothing is killed midway)
    loads = [row["load_average"][0] for row in samples]
    result = {
        "verify": answers["verify"], "identify": answers["identify"], "memory": memory_summary(samples, duration_s),
        "load_average_1min": {"mean": round(float(np.mean(loads)), 2) if loads else None,
                              "max": max(loads) if loads else None},
        "ingest": ingest, "samples": samples,
    }
    if promoter:
        if not promoted:
            promoted["error"] = "the soak ended before the promotion was due"
        result["promotion"] = promoted
        result["switch"] = switch_phases(events, promoted)
        result["memory"]["around_promotion"] = _memory_around(samples, promoted)
    return result


def _memory_around(samples: list[dict], promotion: dict) -> dict:
    """The service's memory at the last sample before the promotion and the first after the reload."""
    began, reloaded = promotion.get("started_s"), (promotion.get("steps_ended_s") or {}).get("reload")
    rows = [row for row in samples if row["rss_mb"] is not None]
    before = [row["rss_mb"] for row in rows if began is not None and row["t_s"] <= began]
    after = [row["rss_mb"] for row in rows if reloaded is not None and row["t_s"] >= reloaded]
    return {"before_mb": before[-1] if before else None, "after_reload_mb": after[0] if after else None}


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
    result = run_soak(settings, Path(args.out), minutes=args.minutes, clients=args.clients,
                      promote=not args.no_promotion, promote_at=args.promote_at, command=command)
    summary = {key: result[key] for key in ("goals", "memory", "load_average_1min", "ingest")}
    summary["ingest"] = {k: v for k, v in summary["ingest"].items() if k not in ("seconds", "stored_with")}
    summary["verify"] = {k: result["verify"][k] for k in ("requests", "errors", "requests_per_s", "p50_ms", "p99_ms")}
    summary["identify"] = {k: result["identify"][k] for k in ("requests", "errors", "requests_per_s", "p50_ms", "p99_ms")}
    if "promotion" in result:
        summary["promotion"] = {k: v for k, v in result["promotion"].items() if k != "reembed"}
        summary["switch"] = {k: v for k, v in result["switch"].items()}
    print(json.dumps(summary, indent=2))
    print(f"written: {args.out}")
    goals = result["goals"]
    promotion_ok = "promotion" not in goals or goals["promotion"]["new_model_serves_after_reload"]
    ok = goals["zero_errors_met"] and not result["ingest"]["failed"] and goals["store_single_model"] and promotion_ok
    return 0 if ok else 1
