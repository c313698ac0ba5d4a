"""``faces bench serve``: the HTTP service under load, beside the same work in-process.

For ``/verify`` (two LFW photos of a pairs.txt pair) and ``/identify`` (one LFW photo,
against an identity store built from a few LFW people): p50 / p95 / p99 latency,
requests per second and errors at 1, 8 and 32 concurrent clients, each client sending
its next request as soon as it has its answer. Beside it, the same work called
in-process one request at a time (decode, detect, align, embed, compare: the
:mod:`components.serving` cores without HTTP or batching); the ratio of the two p50s
at one client is what HTTP and the batching queue cost.

The service runs as a real ``bentoml serve`` on a free loopback port, started and
stopped here; the in-process baseline runs first, alone. The clients share the
machine with the server: on a 2-core machine they take a share of its CPU.

With ``baseline_detect_mode`` (``package``: the detector before the fast one) a second
service runs that detector through its own params file, beside the engine's, and both
are measured level by level in the same run (the order alternating between levels), so
the ratio of their p50s is the detector's doing and not the machine's load of the hour.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from components.bench import save_result, with_detect_mode, write_params
from components.settings import PROJECT_ROOT, Settings

LFW = PROJECT_ROOT / "data" / "lfw"
STORE_PEOPLE = 10
STORE_PHOTOS = 3


def lfw_photo(person: str, number: int) -> Path:
    return LFW / "images_deepfunneled" / person / f"{person}_{int(number):04d}.jpg"


def lfw_pairs(limit: int) -> list[tuple[Path, Path]]:
    """The first ``limit`` pairs of pairs.txt fold 1, same and different alternating."""
    same, different = [], []
    for line in (LFW / "pairs.txt").read_text().splitlines()[1:601]:
        fields = line.split()
        if len(fields) == 3:
            same.append((lfw_photo(fields[0], fields[1]), lfw_photo(fields[0], fields[2])))
        elif len(fields) == 4:
            different.append((lfw_photo(fields[0], fields[1]), lfw_photo(fields[2], fields[3])))
    mixed = [pair for both in zip(same, different) for pair in both]
    return mixed[:limit]


def store_people() -> list[str]:
    """People with enough photos for an identity and held-out queries (alphabetical, deterministic)."""
    people = []
    for line in (LFW / "people.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit() and int(fields[1]) >= STORE_PHOTOS + 3:
            people.append(fields[0])
    return sorted(set(people))[:STORE_PEOPLE]


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    values = np.asarray(latencies) * 1000
    return {f"p{q}_ms": round(float(np.percentile(values, q)), 1) for q in (50, 95, 99)}


def machine() -> dict:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(), "gpu": None}


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# -- in-process baseline -----------------------------------------------------------------

def in_process(settings: Settings, pairs, queries, duration_s: float) -> dict:
    """The same work as the endpoints, called directly, one request at a time."""
    from components.serving.engine import FaceEngine
    from components.serving.model import ModelHolder
    from components.serving.operations import verify_answer
    from components.serving.requests import decode_photo

    holder = ModelHolder(alias=settings.serve.model_alias, batch_size=settings.embed.batch_size)
    holder.refresh()
    engine = FaceEngine(holder, settings.detect, settings.serve.max_faces)
    engine.warm_up()
    params = settings.serve

    def verify_once(i: int) -> None:
        a, b = pairs[i % len(pairs)]
        (image_a, sa), (image_b, sb) = decode_photo(a.read_bytes(), "a", params), decode_photo(b.read_bytes(), "b", params)
        photos, model = engine.analyse([image_a, image_b])
        verify_answer(photos[0], photos[1], (sa, sb), model.thresholds.verify, model.describe())

    def identify_once(i: int) -> None:
        image, _ = decode_photo(queries[i % len(queries)].read_bytes(), "photo", params)
        engine.analyse([image])  # + a (K, D) product against the medoids: microseconds

    results = {}
    for name, call in (("verify", verify_once), ("identify", identify_once)):
        call(0)
        latencies, start, i = [], time.perf_counter(), 0
        while time.perf_counter() - start < duration_s:
            began = time.perf_counter()
            call(i)
            latencies.append(time.perf_counter() - began)
            i += 1
        elapsed = time.perf_counter() - start
        results[name] = {"requests": len(latencies), "requests_per_s": round(len(latencies) / elapsed, 2),
                         **percentiles(latencies)}
    return results


# -- HTTP ----------------------------------------------------------------------------

def load_level(url: str, key: str, endpoint: str, bodies: list, clients: int, duration_s: float,
               on_answer: Callable[[float, str | None, object], None] | None = None) -> dict:
    """``clients`` closed-loop clients for ``duration_s`` seconds; latency, throughput, errors.

    ``on_answer(seconds, outcome, response)`` is called for every counted request (outcome
    None for a 200, else what failed; response None after a connection error): the soak
    reads which model answered from it.
    """
    import httpx

    stop = threading.Event()
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as session:
            i = offset
            while not stop.is_set():
                files = bodies[i % len(bodies)]
                i += clients
                began = time.perf_counter()
                response = None
                try:
                    response = session.post(endpoint, files=files)
                    ok = response.status_code == 200
                    outcome = None if ok else f"HTTP {response.status_code}"
                except httpx.HTTPError as error:
                    outcome = type(error).__name__
                took = time.perf_counter() - began
                with lock:
                    if stop.is_set():
                        return  # finished after the window closed: not counted
                    if outcome is None:
                        latencies.append(took)
                    else:
                        errors[outcome] += 1
                if on_answer is not None:
                    on_answer(took, outcome, response)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(duration_s)
    with lock:
        stop.set()
        elapsed = time.perf_counter() - start
        done = len(latencies)
        failed = sum(errors.values())
    for thread in threads:
        thread.join(timeout=180)
    return {"clients": clients, "requests": done, "errors": failed, "error_kinds": dict(errors),
            "requests_per_s": round(done / elapsed, 2), **percentiles(latencies)}


def _files(pairs, queries) -> tuple[list, list]:
    verify = [[("photo_a", (a.name, a.read_bytes(), "image/jpeg")), ("photo_b", (b.name, b.read_bytes(), "image/jpeg"))]
              for a, b in pairs]
    identify = [[("photo", (q.name, q.read_bytes(), "image/jpeg"))] for q in queries]
    return verify, identify


def build_store(work: Path, people: list[str], env: dict) -> str:
    """An identity store from ``faces run`` over STORE_PHOTOS photos of each person."""
    import subprocess

    folder = work / "people"
    for person in people:
        (folder / person).mkdir(parents=True, exist_ok=True)
        for number in range(1, STORE_PHOTOS + 1):
            link = folder / person / lfw_photo(person, number).name
            if not link.exists():
                os.symlink(lfw_photo(person, number), link)
    done = subprocess.run([sys.executable, "-m", "components.cli", "run", "--input", str(folder), "--out",
                           str(work / "store"), "--folder-labels", "--no-progress"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"building the identity store failed:\n{done.stderr[-2000:]}")
    return f"sqlite:///{work / 'store' / 'faces.db'}"


def run_benchmark(settings: Settings, out: Path, levels=(1, 8, 32), duration_s: float = 20.0,
                  pairs_count: int = 40, command: str = "", baseline_detect_mode: str | None = "package") -> dict:
    """Measure, write ``out`` (JSON) and return the result.

    Args:
        baseline_detect_mode: also measure a service whose detector runs in this
            ``detect.mode`` (None, or the engine's own mode: only the engine's service).
    """
    from components.serving.launch import free_port, start_server, stop_server, wait_ready

    mode = settings.detect.mode
    baseline_detect_mode = baseline_detect_mode if baseline_detect_mode not in (None, mode) else None
    variants = {mode: settings}
    if baseline_detect_mode:
        variants[baseline_detect_mode] = with_detect_mode(settings, baseline_detect_mode)
    pairs = lfw_pairs(pairs_count)
    people = store_people()
    queries = [lfw_photo(person, number) for person in people for number in (STORE_PHOTOS + 1, STORE_PHOTOS + 2)]
    load_before = load_average()
    in_proc = {name: in_process(chosen, pairs, queries, duration_s) for name, chosen in variants.items()}

    result: dict = {"benchmark": "serve", "command": command, "machine": machine(), "load_average_before": load_before,
                    "detect_mode": mode, "baseline_detect_mode": baseline_detect_mode}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="faces-bench-serve-") as tmp:
        work = Path(tmp)
        key = secrets.token_hex(16)
        env = {**os.environ, "FACES_API_KEY": key, "BENTOML_HOME": str(work / "bentoml"), "TF_CPP_MIN_LOG_LEVEL": "2",
               "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(PROJECT_ROOT)}
        env["FACES_STORE_URL"] = build_store(work, people, env)
        envs = {mode: env}
        if baseline_detect_mode:
            params = write_params(work / f"params-{baseline_detect_mode}.yaml", variants[baseline_detect_mode])
            envs[baseline_detect_mode] = {**env, "FACES_PARAMS": str(params),
                                          "BENTOML_HOME": str(work / "bentoml-baseline")}
        services: dict[str, tuple] = {}
        try:
            for name, service_env in envs.items():
                port, log = free_port(), work / f"serve-{name}.log"
                services[name] = (start_server(service_env, port, log), f"http://127.0.0.1:{port}", log)
            for process, url, log in services.values():
                wait_ready(url, process, log, timeout_s=360)  # two services loading TensorFlow at once on 2 cores
            verify_files, identify_files = _files(pairs, queries)
            http: dict = {name: {"verify": {}, "identify": {}} for name in services}
            for endpoint, bodies in (("verify", verify_files), ("identify", identify_files)):
                for _, url, _ in services.values():
                    load_level(url, key, f"/{endpoint}", bodies, 1, min(5.0, duration_s))  # warm up (graphs, batching optimiser)
                for index, clients in enumerate(levels):
                    # Taking turns, so a load that drifts during the run does not favour one detector.
                    names = list(services) if index % 2 == 0 else list(reversed(services))
                    for name in names:
                        row = load_level(services[name][1], key, f"/{endpoint}", bodies, clients, duration_s)
                        http[name][endpoint][str(clients)] = row
                        loads.append(os.getloadavg()[0])
                        print(f"{name} {endpoint} x{clients}: {row}", flush=True)
            import httpx

            model = httpx.get(f"{services[mode][1]}/healthz", timeout=10).json()
        finally:
            for process, _, _ in services.values():
                stop_server(process)
    result["load_average_after"] = load_average()
    result["load_average_1min_during"] = {"mean": round(float(np.mean(loads)), 2), "min": round(min(loads), 2),
                                          "max": round(max(loads), 2), "samples": len(loads)}
    result["model"] = {k: model.get(k) for k in ("model_version", "registry_version", "source")}
    result["setup"] = {"duration_s_per_level": duration_s, "verify_pairs": len(pairs), "identify_photos": len(queries),
                       "store_people": len(people), "store_photos_per_person": STORE_PHOTOS,
                       "batch_max_size": settings.serve.batch_max_size, "workers": {"faces": 1, "embedder": 1}}
    result["in_process"] = in_proc[mode]
    result["http"] = http[mode]
    if baseline_detect_mode:
        result["baseline"] = {"detect_mode": baseline_detect_mode, "in_process": in_proc[baseline_detect_mode],
                              "http": http[baseline_detect_mode]}
        result["comparison"] = compare(http[mode], http[baseline_detect_mode])
    result["table"] = table(in_proc, http, mode)
    result["goals"] = goals(http[mode], http.get(baseline_detect_mode), levels)
    save_result(out, result)
    return result


def compare(engine: dict, baseline: dict) -> dict:
    """Per endpoint and client level: p50 / p95 and errors of both services, the engine's p50 over the baseline's."""
    rows: dict = {}
    for endpoint, levels in engine.items():
        rows[endpoint] = {}
        for clients, ours in levels.items():
            theirs = baseline[endpoint][clients]
            rows[endpoint][clients] = {
                "p50_ms": ours["p50_ms"], "p95_ms": ours["p95_ms"], "errors": ours["errors"],
                "baseline_p50_ms": theirs["p50_ms"], "baseline_p95_ms": theirs["p95_ms"],
                "baseline_errors": theirs["errors"],
                "p50_ratio_to_baseline": round(ours["p50_ms"] / theirs["p50_ms"], 3)
                if ours["p50_ms"] and theirs["p50_ms"] else None,
            }
    return rows


def table(in_proc: dict, http: dict, mode: str) -> list[dict]:
    """One row per endpoint, detector and client level; the engine's detector first."""
    rows = []
    for endpoint in ("verify", "identify"):
        for name in sorted(http, key=lambda n: n != mode):
            base = in_proc[name][endpoint]
            rows.append({"endpoint": f"/{endpoint}", "detect_mode": name, "mode": "in-process, sequential",
                         "clients": 1, **base, "errors": 0})
            for row in http[name][endpoint].values():
                rows.append({"endpoint": f"/{endpoint}", "detect_mode": name, "mode": "HTTP", **row,
                             "p50_ratio_to_in_process": round(row["p50_ms"] / base["p50_ms"], 2) if row["p50_ms"] else None})
    return rows


def goals(http: dict, baseline: dict | None, levels) -> dict:
    """The goals: /verify p50 at one client (<= 0.7x the baseline detector's in the same run), no errors at the top level."""
    v = http["verify"]
    lowest, highest = str(min(levels)), str(max(levels))
    errors = v[highest]["errors"] + http["identify"][highest]["errors"]
    result = {
        "verify_p50_at_1_ms": v[lowest]["p50_ms"], "verify_p50_at_1_goal_ms": 150,
        "verify_p50_at_1_met": v[lowest]["p50_ms"] is not None and v[lowest]["p50_ms"] <= 150,
        "errors_at_32": errors, "zero_errors_at_32_met": errors == 0,
        "verify_throughput_ratio_32_to_1": round(v[highest]["requests_per_s"] / v[lowest]["requests_per_s"], 2),
        "throughput_ratio_goal": 1.5,
        "throughput_ratio_met": v[highest]["requests_per_s"] >= 1.5 * v[lowest]["requests_per_s"],
    }
    if baseline is not None:
        theirs = baseline["verify"][lowest]["p50_ms"]
        ratio = round(v[lowest]["p50_ms"] / theirs, 3) if v[lowest]["p50_ms"] and theirs else None
        result.update({
            "baseline_verify_p50_at_1_ms": theirs, "verify_p50_at_1_ratio_to_baseline": ratio,
            "verify_p50_ratio_goal": 0.7, "verify_p50_ratio_met": ratio is not None and ratio <= 0.7,
            "baseline_errors_at_32": baseline["verify"][highest]["errors"] + baseline["identify"][highest]["errors"],
        })
    return result


def main(args, settings: Settings) -> int:
    """Entry point of ``faces bench serve``."""
    levels = tuple(int(v) for v in args.levels.split(","))
    command = "faces " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("faces") else " ".join(sys.argv)
    baseline = None if args.baseline_detect_mode == "none" else args.baseline_detect_mode
    result = run_benchmark(settings, Path(args.out), levels=levels, duration_s=args.duration, command=command,
                           baseline_detect_mode=baseline)
    print(json.dumps({"table": result["table"], "goals": result["goals"]}, indent=2))
    print(f"written: {args.out}")
    return 0
