"""The face service over HTTP, against a real ``bentoml serve`` (see conftest.py)."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.make_bad_images import write_bad_images
from tests.serving.conftest import (
    API_KEY,
    BASE_THRESHOLDS,
    PERTURBED_THRESHOLDS,
    PHOTOS_PER_PERSON,
    STORE_PEOPLE,
    first_pairs,
    lfw_photo,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAME, DIFFERENT = first_pairs()
VERIFY_KEYS = {"same", "similarity", "threshold", "faces", "photo_a", "photo_b", "model_version", "registry_version",
               "source", "generation", "loaded_at", "thresholds", "faces_a"}


def files(**paths: Path) -> list:
    return [(field, (path.name, path.read_bytes(), "image/jpeg")) for field, path in paths.items()]


def verify(client, a: Path, b: Path):
    return client.post("/verify", files=files(photo_a=a, photo_b=b))


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert "Traceback" not in response.text and "File \"" not in response.text
    return body


def test_probes_name_the_model(server):
    with server.client(key=None) as client:
        health, ready = client.get("/healthz"), client.get("/readyz")
    assert health.status_code == 200 and ready.status_code == 200
    assert health.json()["model_version"].startswith("dlib-resnet-faceapi")
    assert ready.json()["ready"] is True and ready.json()["identity_store"] is True
    assert ready.json()["registry_version"] == server.versions["base"]  # the champion, from the registry


def test_openapi_documents_the_endpoints(server):
    with server.client() as client:
        spec = client.get("/docs.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert {"/verify", "/identify", "/embed", "/reload"} <= set(paths)
    schema = json.dumps(paths["/verify"])
    assert "photo_a" in schema and "photo_b" in schema


@pytest.mark.parametrize("path", ["/docs.json", "/metrics", "/", "/no-such-path"])
def test_every_path_but_the_probes_needs_the_key(server, path):
    with server.client(key=None) as client:
        refused = client.get(path)
        probes = [client.get(probe).status_code for probe in ("/healthz", "/readyz")]
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key", refused.text
    assert probes == [200, 200]
    with server.client() as client:
        assert client.get(path).status_code == (404 if path == "/no-such-path" else 200)


def test_verify_same_and_different_pairs(server):
    with server.client() as client:
        same, different = verify(client, *SAME), verify(client, *DIFFERENT)
    assert same.status_code == 200 and different.status_code == 200, (same.text, different.text)
    same, different = same.json(), different.json()
    assert same["same"] is True and same["similarity"] >= same["threshold"]
    assert different["same"] is False and different["similarity"] < different["threshold"]
    assert same["faces"][0] >= 1 and len(same["photo_a"]["box"]) == 4
    assert same["model_version"] and same["registry_version"] == server.versions["base"]


def test_verify_tells_nothing_about_stored_identities(server):
    person = STORE_PEOPLE[0]
    with server.client() as client:
        response = verify(client, lfw_photo(person, 1), lfw_photo(person, 2))  # both photos are in the store
    assert response.status_code == 200
    assert set(response.json()) == VERIFY_KEYS
    text = response.text.lower()
    for name in server.names.values():
        assert name.lower() not in text and name.replace("_", " ").lower() not in text
    assert "identity" not in text and '"id"' not in text


def test_identify_names_known_people_and_not_strangers(server):
    held_out = [(person, number) for person in STORE_PEOPLE for number in (PHOTOS_PER_PERSON + 1, PHOTOS_PER_PERSON + 2)]
    with server.client() as client:
        hits = [(person, client.post("/identify", files=files(photo=lfw_photo(person, number))))
                for person, number in held_out]
        miss = client.post("/identify", files=files(photo=DIFFERENT[0]))  # nobody in the store
    named = 0
    for person, response in hits:
        assert response.status_code == 200, response.text
        face = max(response.json()["faces"], key=lambda f: f["box"][2] * f["box"][3])
        if face["identity"] != "unknown":  # never the wrong person; unknown when below the threshold
            assert face["name"] == person.replace("_", " ") and server.names[face["id"]] == person
            assert face["identity"] == face["id"] and face["similarity"] >= response.json()["threshold"]
            named += 1
    assert named >= 0.75 * len(hits), f"only {named} of {len(hits)} held-out photos identified"
    assert miss.status_code == 200, miss.text
    main = max(miss.json()["faces"], key=lambda f: f["box"][2] * f["box"][3])
    assert main["identity"] == "unknown" and main["name"] is None and main["similarity"] < miss.json()["threshold"]
    assert miss.json()["model_version"] == hits[0][1].json()["model_version"]


def test_embed_photos_and_aligned_crops(server):
    crop = next((server.root / "store" / "crops").rglob("*.jpg"))
    with server.client() as client:
        photos = client.post("/embed", files=files(photos=SAME[0]) + files(photos=SAME[1]))
        crops = client.post("/embed", data={"aligned": "true"}, files=[("photos", (crop.name, crop.read_bytes(), "image/jpeg"))])
    assert photos.status_code == 200 and crops.status_code == 200, (photos.text, crops.text)
    faces = [photo["faces"] for photo in photos.json()["photos"]]
    assert len(faces) == 2 and all(faces)
    for vector in [face["embedding"] for photo in faces for face in photo] + crops.json()["embeddings"]:
        assert len(vector) == 128 and abs(np.linalg.norm(vector) - 1) < 1e-3
    a, b = (np.asarray(photo[0]["embedding"]) for photo in faces)
    assert a @ b >= photos.json().get("threshold", 0.9)  # the same pair, as embeddings
    assert photos.json()["model_version"] == crops.json()["model_version"]


@pytest.mark.parametrize("name, status, code", [
    ("empty.jpg", 400, "empty"),
    ("notes_named_as.jpg", 400, "not_an_image"),
    ("truncated.jpg", 400, "truncated"),
    ("truncated.png", 400, "truncated"),
    ("bomb.png", 413, "too_many_pixels"),
    ("tiny.png", 422, "too_small"),
])
def test_bad_photos_get_a_json_4xx(server, tmp_path, name, status, code):
    expected = write_bad_images(tmp_path)
    assert expected[name] == code
    with server.client() as client:
        response = client.post("/verify", files=files(photo_a=tmp_path / name, photo_b=SAME[0]))
    body = assert_error(response, status, code)
    assert body["error"]["field"] == "photo_a" and body["model_version"]


def test_a_photo_without_a_face_is_422(server):
    pixels = np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    with server.client() as client:
        response = client.post("/identify", files=[("photo", ("noise.png", buffer.getvalue(), "image/png"))])
    assert assert_error(response, 422, "no_face")["error"]["field"] == "photo"


def test_wrong_content_types_are_415(server):
    with server.client() as client:
        declared_text = client.post("/verify", files=[("photo_a", ("a.txt", SAME[0].read_bytes(), "text/plain")),
                                                      ("photo_b", ("b.jpg", SAME[1].read_bytes(), "image/jpeg"))])
        as_json = client.post("/verify", json={"photo_a": "http://127.0.0.1/a.jpg", "photo_b": "x"})
    assert assert_error(declared_text, 415, "wrong_content_type")["error"]["field"] == "photo_a"
    assert_error(as_json, 415, "wrong_content_type")


def test_a_url_instead_of_a_file_is_refused(server):
    with server.client() as client:
        response = client.post("/verify", data={"photo_a": "http://169.254.169.254/latest", "photo_b": "x"})
    # httpx sends plain fields as urlencoded without files; as multipart they are plain values
    assert response.status_code in (400, 415)
    with server.client() as client:
        response = client.post("/verify", data={"photo_a": "http://169.254.169.254/latest"}, files=files(photo_b=SAME[1]))
    assert_error(response, 400, "not_a_file")


def test_missing_and_unknown_fields(server):
    with server.client() as client:
        missing = client.post("/verify", files=files(photo_a=SAME[0]))
        unknown = client.post("/identify", files=files(photo=SAME[0], selfie=SAME[1]))
    assert assert_error(missing, 400, "missing_field")["error"]["field"] == "photo_b"
    assert_error(unknown, 400, "unknown_field")


def read_http_response(sock: socket.socket) -> str:
    """One HTTP/1.1 response from a raw socket: the headers, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data.decode("latin-1")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode("latin-1")


def test_huge_requests_are_413_before_reading(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /verify HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
                     "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 900000000\r\n\r\n".encode())
        answer = read_http_response(sock)  # answered without sending a byte of the body
    assert answer.startswith("HTTP/1.1 413") and "request_too_large" in answer
    big = np.random.default_rng(1).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, "PNG")  # ~4.3 MB, above the test limit of 3 MB
    with server.client() as client:
        try:
            response = client.post("/verify", files=[("photo_a", ("big.png", buffer.getvalue(), "image/png")),
                                                     ("photo_b", ("b.jpg", SAME[1].read_bytes(), "image/jpeg"))])
        except Exception as error:  # the server may close before the client finished sending
            pytest.fail(f"no answer to an oversized upload: {error!r}")
    assert_error(response, 413, "request_too_large")


@pytest.mark.parametrize("key, code", [(None, "missing_api_key"), ("wrong-key", "wrong_api_key")])
def test_missing_or_wrong_key_is_401(server, key, code):
    with server.client(key=key) as client:
        for path, body in (("/verify", files(photo_a=SAME[0], photo_b=SAME[1])), ("/identify", files(photo=SAME[0])),
                           ("/embed", files(photos=SAME[0]))):
            assert_error(client.post(path, files=body), 401, code)
        assert_error(client.post("/reload"), 401, code)


def _hammer(server, stop: threading.Event, results: list, pairs) -> None:
    with server.client() as client:
        i = 0
        while not stop.is_set():
            a, b = pairs[i % len(pairs)]
            i += 1
            try:
                response = verify(client, a, b)
                results.append((response.status_code, response.json().get("registry_version"),
                                response.json().get("model_version")))
            except Exception as error:  # a dropped connection is a failure too
                results.append((repr(error), None, None))


def test_32_clients_for_30_seconds_without_errors(server):
    pairs = [SAME, DIFFERENT, (lfw_photo(STORE_PEOPLE[2], 1), lfw_photo(STORE_PEOPLE[2], 2))]
    stop, results = threading.Event(), []
    with ThreadPoolExecutor(32) as pool:
        for _ in range(32):
            pool.submit(_hammer, server, stop, results, pairs)
        time.sleep(30)
        stop.set()
    failures = [r for r in results if r[0] != 200]
    assert len(results) >= 32 and not failures, f"{len(failures)} of {len(results)} failed: {failures[:5]}"


def test_a_promotion_is_served_once_the_store_is_reembedded_without_failed_requests(server):
    """Promote a new version: serving stays on the store's model until `faces reembed` moved the
    store to it, then swaps (the poll picks it up) with traffic throughout; roll back the same way."""
    with server.client() as client:
        before = client.get("/readyz").json()
    perturbed = server.register(server.perturbed_model, thresholds=PERTURBED_THRESHOLDS)
    stop, results = threading.Event(), []
    threads = [threading.Thread(target=_hammer, args=(server, stop, results, [SAME])) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        server.promote(perturbed)
        with server.client() as client:
            kept = client.post("/reload")  # resolves now: the store still holds the old model's embeddings
        moved = server.reembed()
        deadline = time.monotonic() + 60
        while not any(r[1] == perturbed for r in results) and time.monotonic() < deadline:
            time.sleep(0.25)
        with server.client() as client:
            identified = client.post("/identify", files=files(photo=lfw_photo(STORE_PEOPLE[0], PHOTOS_PER_PERSON + 2)))
            server.promote(server.versions["base"])
            back = server.reembed()
            reloaded = client.post("/reload")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert kept.status_code == 200 and kept.json()["registry_version"] == server.versions["base"], kept.text
    assert moved["changed"] and moved["model"]["registry_version"] == perturbed, moved
    assert any(r[1] == perturbed for r in results), "the re-embedded store's model never answered"
    failures = [r for r in results if r[0] != 200]
    assert not failures, f"{len(failures)} of {len(results)} requests failed during the swap: {failures[:5]}"
    served = [r[1] for r in results]
    first_new = served.index(perturbed)
    assert set(served[:first_new]) <= {server.versions["base"]}
    new_version = next(r[2] for r in results if r[1] == perturbed)
    assert new_version != before["model_version"]  # a different model, not only a new number
    # Identify compares with the store's medoids, now embedded by the new model, at its own threshold.
    assert identified.status_code == 200, identified.text
    assert identified.json()["model_version"] == new_version
    assert identified.json()["threshold"] == PERTURBED_THRESHOLDS.assign
    face = max(identified.json()["faces"], key=lambda f: f["box"][2] * f["box"][3])
    assert face["name"] == STORE_PEOPLE[0].replace("_", " ")
    # Rolled back: the store re-embedded with the base model, and POST /reload follows at once.
    assert back["changed"] and back["model"]["registry_version"] == server.versions["base"], back
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["registry_version"] == server.versions["base"]
    assert reloaded.json()["model_version"] == before["model_version"]
    assert reloaded.json()["thresholds"] == BASE_THRESHOLDS.as_dict()


def test_the_service_refuses_to_start_without_a_key(tmp_path):
    import os
    import subprocess
    import sys

    from components.settings import PROJECT_ROOT

    env = {k: v for k, v in os.environ.items() if k != "FACES_API_KEY"}
    env.update(BENTOML_HOME=str(tmp_path / "bentoml"), PYTHONPATH=str(PROJECT_ROOT), BENTOML_DO_NOT_TRACK="True")
    done = subprocess.run([sys.executable, "-m", "bentoml", "serve", "serving.service:FaceAPI", "--host", "127.0.0.1",
                           "--port", "1"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "FACES_API_KEY is not set" in done.stderr + done.stdout
