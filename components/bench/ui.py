"""``faces bench ui``: the people page on a store of LFW's size, server time per screen.

The store is all of LFW's photos laid out as ``faces run`` would leave them, without
running the detector: the ``--people`` people with the most photos become identities (their
photos, one face each, clustered by person: 5,000 people and about 12.5k faces), every
other photo waits in the unknown pool (13,233 faces in all). Crops are the central
150x150 of each deep-funneled photo (LFW centres the face), written as JPEG files;
embeddings are synthetic (a unit centre per person plus noise), as the pages only rank
by them. Everything is written through the store API.

Each screen is requested ``--repeats`` times through the application in-process (the
ASGI app called directly: server time, no network), signed in, and the median and p95
are reported; the machine's load average is recorded before and after, so a figure is
called idle only when the load says so. Goal: the people page's first screen under
300 ms of server time.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from components.bench import save_result

GOAL_MS = 300.0
DIM = 128


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def lfw_people(root: Path) -> list[tuple[str, list[Path]]]:
    """(person, photos) of every LFW person, most photos first (ties by name)."""
    people = [(folder.name, sorted(folder.glob("*.jpg"))) for folder in sorted(root.iterdir()) if folder.is_dir()]
    return sorted((item for item in people if item[1]), key=lambda item: (-len(item[1]), item[0]))


def build_store(folder: Path, lfw_root: Path, people: int, faces: int, seed: int = 0) -> dict:
    """Write the benchmark store into ``folder`` (``faces.db`` and ``crops/``); returns its counts."""
    from PIL import Image

    from components.identities import IdentityStore, NewFace
    from components.identities.lifecycle import medoid_row

    everyone = lfw_people(lfw_root)
    if not everyone:
        raise FileNotFoundError(f"no LFW photos under {lfw_root}; run `make setup` (dvc pull) first")
    rng = np.random.default_rng(seed)
    url = f"sqlite:///{folder / 'faces.db'}"
    store = IdentityStore(url)
    labels = []
    written = 0
    for number, (person, photos) in enumerate(everyone):
        if written >= faces:
            break
        centre = rng.normal(size=DIM)
        centre /= np.linalg.norm(centre)
        for index, photo in enumerate(photos):
            if written >= faces:
                break
            relative = f"crops/{number // 100:03d}/{photo.stem}_0.jpg"
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            with Image.open(photo) as image:
                image.convert("RGB").crop((50, 50, 200, 200)).save(folder / relative, format="JPEG", quality=90)
            vector = centre + rng.normal(scale=0.03, size=DIM)
            vector = (vector / np.linalg.norm(vector)).astype(np.float32)
            face = NewFace(face_index=0, box=(50.0, 50.0, 150.0, 150.0), landmarks=np.zeros((5, 2)), confidence=1.0,
                           blur=1.0, failures=[], embedding=vector, model_version="bench-ui", crop_path=relative,
                           label=person)
            store.add_image(f"{number:08d}{index:056d}", str(photo), (250, 250), [face], "bench", person)
            labels.append(number if number < people else -1 - written)  # beyond --people: alone in the pool
            written += 1
    matrix = store.usable_faces()
    face_ids, x = matrix.face_ids, matrix.embeddings
    labels = np.asarray(labels, np.int64)
    kept = np.flatnonzero(labels >= 0)
    order = kept[np.argsort(labels[kept], kind="stable")]
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    position = {int(row): index for index, row in enumerate(kept)}
    centres = {}
    for rows in np.split(order, bounds):
        centres[int(labels[rows[0]])] = position[int(rows[medoid_row(x[rows])])]
    # The people become identities (any size); every other face waits in the pool.
    store.replace_clustering(face_ids[kept], labels[kept], x[kept], centres, 1)
    pooled = np.flatnonzero(labels < 0)
    from components.identities import store as db

    with store.session() as session:
        session.add_all(db.PoolFaceRow(face_id=int(face), reclustered=True) for face in face_ids[pooled])
    counts = store.counts()
    counts["pool"] = len(store.pool_face_ids())
    store.engine.dispose()
    return counts


def _time(client, path: str, repeats: int) -> dict:
    times = []
    status = None
    for _ in range(repeats):
        start = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        status = answer.status_code
    first = times[0]
    return {"path": path, "status": status, "first_ms": round(first, 1), "median_ms": round(float(np.median(times)), 1),
            "p95_ms": round(float(np.percentile(times, 95)), 1), "repeats": repeats}


def run_benchmark(settings, *, out: Path, people: int = 5000, faces: int = 13000, repeats: int = 20,
                  store_folder: Path | None = None, lfw_root: Path | None = None) -> dict:
    from starlette.testclient import TestClient

    from components.identities import IdentityStore
    from components.identities.lifecycle import Policy
    from components.settings import PROJECT_ROOT
    from components.ui.app import create_app

    lfw_root = lfw_root or PROJECT_ROOT / "data" / "lfw" / "images_deepfunneled"
    temporary = store_folder is None
    folder = Path(tempfile.mkdtemp(prefix="bench-ui-")) if temporary else Path(store_folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        load_before_build = _load()
        start = time.perf_counter()
        if not (folder / "faces.db").exists():
            counts = build_store(folder, lfw_root, people, faces)
        else:
            store = IdentityStore(f"sqlite:///{folder / 'faces.db'}")
            counts = {**store.counts(), "pool": len(store.pool_face_ids())}
        build_s = time.perf_counter() - start
        store = IdentityStore(f"sqlite:///{folder / 'faces.db'}")
        secret = "bench-ui-password"
        policy = Policy.from_settings(settings)
        app = create_app(store, settings, environ={"FACES_UI_PASSWORD": secret}, crops_root=str(folder), policy=policy)
        client = TestClient(app, base_url="http://127.0.0.1")
        import re

        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
        client.post("/login", data={"csrf": token, "secret": secret})
        largest = store.identity_list()[0]
        pages_of_largest = -(-largest["size"] // settings.ui.faces_per_page)
        load_before = _load()
        screens = {
            "people_first_screen": _time(client, "/", repeats),
            "people_by_name": _time(client, "/?sort=name", repeats),
            "people_most_recent": _time(client, "/?sort=recent", repeats),
            "people_search": _time(client, "/?q=george", repeats),
            "people_last_screen": _time(client, f"/?page={-(-counts['identities'] // settings.ui.people_per_page)}", repeats),
            "person_largest_first_screen": _time(client, f"/people/{largest['id']}", repeats),
            "person_largest_last_screen": _time(client, f"/people/{largest['id']}?page={pages_of_largest}", repeats),
            "unknown_first_screen": _time(client, "/unknown", max(3, repeats // 4)),
            "thumbnail": _time(client, f"/faces/{largest['medoid_face_id']}/thumb.jpg", repeats),
            "photo_with_box": _time(client, f"/faces/{largest['medoid_face_id']}/photo.jpg", max(3, repeats // 4)),
        }
        load_after = _load()
        first = screens["people_first_screen"]
        result = {
            "benchmark": "faces bench ui",
            "store": {**counts, "people_goal": people, "faces_goal": faces, "build_seconds": round(build_s, 1),
                      "largest_person_faces": largest["size"]},
            "screens": screens,
            "goal": {"people_first_screen_ms": GOAL_MS, "measured_median_ms": first["median_ms"],
                     "measured_p95_ms": first["p95_ms"], "met": first["p95_ms"] < GOAL_MS},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "load_average_before_build": load_before_build, "load_average_before": load_before,
                        "load_average_after": load_after},
            "how": "server time: the ASGI app called in-process through Starlette's test client, signed in; "
                   "SQLite store on local disk; thumbnails cached after the first request",
        }
        save_result(out, result)
        store.engine.dispose()
        return result
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)


def main(args, settings) -> int:
    import json

    result = run_benchmark(settings, out=Path(args.out), people=args.people, faces=args.faces, repeats=args.repeats,
                           store_folder=Path(args.store) if args.store else None)
    print(json.dumps({"store": result["store"], "goal": result["goal"],
                      "screens": {name: screen["median_ms"] for name, screen in result["screens"].items()},
                      "load_average": result["machine"]["load_average_before"]}, indent=2))
    print(f"written: {args.out}")
    return 0
