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

from components.bench import save_result
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
                  pairs_count: int = 40, command: str = "") -> dict:
    """Measure, write ``out`` (JSON) and return the result."""
    from components.serving.launch import free_port, start_server, stop_server, wait_ready

    pairs = lfw_pairs(pairs_count)
    people = store_people()
    queries = [lfw_photo(person, number) for person in people for number in (STORE_PHOTOS + 1, STORE_PHOTOS + 2)]
    load_before = load_average()
    baseline = in_process(settings, pairs, queries, duration_s)

    result: dict = {"benchmark": "serve", "command": command, "machine": machine(), "load_average_before": load_before}
    with tempfile.TemporaryDirectory(prefix="faces-bench-serve-") as tmp:
        work = Path(tmp)
        key = secrets.token_hex(16)
        env = {**os.environ, "FACES_API_KEY": key, "BENTOML_HOME": str(work / "bentoml"), "TF_CPP_MIN_LOG_LEVEL": "2",
               "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(PROJECT_ROOT)}
        env["FACES_STORE_URL"] = build_store(work, people, env)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = work / "serve.log"
        process = start_server(env, port, log)
        try:
            wait_ready(url, process, log)
            verify_files, identify_files = _files(pairs, queries)
            http: dict = {"verify": {}, "identify": {}}
            for endpoint, bodies in (("verify", verify_files), ("identify", identify_files)):
                load_level(url, key, f"/{endpoint}", bodies, 1, min(5.0, duration_s))  # warm up (graphs, batching optimiser)
                for clients in levels:
                    http[endpoint][str(clients)] = load_level(url, key, f"/{endpoint}", bodies, clients, duration_s)
                    print(f"{endpoint} x{clients}: {http[endpoint][str(clients)]}", flush=True)
            import httpx

            model = httpx.get(f"{url}/healthz", timeout=10).json()
        finally:
            stop_server(process)
    result["load_average_after"] = load_average()
    result["model"] = {k: model.get(k) for k in ("model_version", "registry_version", "source")}
    result["setup"] = {"duration_s_per_level": duration_s, "verify_pairs": len(pairs), "identify_photos": len(queries),
                       "store_people": len(people), "store_photos_per_person": STORE_PHOTOS,
                       "batch_max_size": settings.serve.batch_max_size, "workers": {"faces": 1, "embedder": 1}}
    result["in_process"] = baseline
    result["http"] = http
    table = []
    for endpoint in ("verify", "identify"):
        base = baseline[endpoint]
        table.append({"endpoint": f"/{endpoint}", "mode": "in-process, sequential", "clients": 1, **base, "errors": 0})
        for clients, row in http[endpoint].items():
            table.append({"endpoint": f"/{endpoint}", "mode": "HTTP", **row,
                          "p50_ratio_to_in_process": round(row["p50_ms"] / base["p50_ms"], 2) if row["p50_ms"] else None})
    result["table"] = table
    v = http["verify"]
    lowest, highest = str(min(levels)), str(max(levels))
    result["goals"] = {
        "verify_p50_at_1_ms": v[lowest]["p50_ms"], "verify_p50_at_1_goal_ms": 150,
        "verify_p50_at_1_met": v[lowest]["p50_ms"] is not None and v[lowest]["p50_ms"] <= 150,
        "errors_at_32": v[highest]["errors"] + http["identify"][highest]["errors"],
        "zero_errors_at_32_met": v[highest]["errors"] + http["identify"][highest]["errors"] == 0,
        "verify_throughput_ratio_32_to_1": round(v[highest]["requests_per_s"] / v[lowest]["requests_per_s"], 2),
        "throughput_ratio_goal": 1.5,
        "throughput_ratio_met": v[highest]["requests_per_s"] >= 1.5 * v[lowest]["requests_per_s"],
    }
    save_result(out, result)
    return result


def main(args, settings: Settings) -> int:
    """Entry point of ``faces bench serve``."""
    levels = tuple(int(v) for v in args.levels.split(","))
    command = "faces " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("faces") else " ".join(sys.argv)
    result = run_benchmark(settings, Path(args.out), levels=levels, duration_s=args.duration, command=command)
    print(json.dumps({"table": result["table"], "goals": result["goals"]}, indent=2))
    print(f"written: {args.out}")
    return 0
