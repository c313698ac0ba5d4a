"""The pure cores of components.serving: request checks, matching, answers (no server, no model)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from components.detect import Face
from components.engine import PhotoFaces
from components.serving.errors import ServingError
from components.serving.identities import MedoidSet, match_faces
from components.serving.model import ModelHolder, ModelUnavailable
from components.serving.operations import identify_answer, verify_answer
from components.serving.requests import (
    ConfigurationError,
    RouteSpec,
    check_api_key,
    check_form_fields,
    check_request_size,
    decode_photo,
    expected_api_key,
)
from components.settings import ServeParams
from tests.fixtures.make_bad_images import write_bad_images

MODEL = {"model_version": "m+1", "registry_version": None}


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, np.float32)
    return vector / np.linalg.norm(vector)


def face(embedding, size=80.0, failures=(), at=(10.0, 10.0)) -> Face:
    return Face((*at, size, size), np.zeros((5, 2)), 0.99, None, 1.0, list(failures), unit(embedding), "m+1")


def status_of(call) -> tuple[int, str]:
    with pytest.raises(ServingError) as caught:
        call()
    return caught.value.status, caught.value.code


def test_api_key_checks():
    check_api_key(None, None)  # keys switched off
    check_api_key("k1", "k1")
    assert status_of(lambda: check_api_key(None, "k1")) == (401, "missing_api_key")
    assert status_of(lambda: check_api_key("k2", "k1")) == (401, "wrong_api_key")
    with pytest.raises(ConfigurationError, match="FACES_API_KEY"):
        expected_api_key(ServeParams(require_api_key=True), environ={})
    assert expected_api_key(ServeParams(require_api_key=False), environ={}) is None
    assert expected_api_key(ServeParams(), environ={"FACES_API_KEY": " s3 "}) == "s3"


def test_request_size_checks():
    params = ServeParams(max_request_bytes=1000)
    assert check_request_size("1000", params) == 1000
    assert status_of(lambda: check_request_size(None, params)) == (411, "length_required")
    assert status_of(lambda: check_request_size("1001", params)) == (413, "request_too_large")
    assert status_of(lambda: check_request_size("ten", params)) == (400, "bad_content_length")


def test_form_field_checks():
    spec = RouteSpec({"photo_a": (1, 1), "photo_b": (1, 1)}, frozenset({"note"}))
    check_form_fields(spec, [("photo_a", True, "image/jpeg"), ("photo_b", True, "image/png"), ("note", False, None)])
    cases = {
        "missing_field": [("photo_a", True, "image/jpeg")],
        "not_a_file": [("photo_a", False, None), ("photo_b", True, "image/jpeg")],
        "unknown_field": [("photo_a", True, "image/jpeg"), ("photo_b", True, "image/jpeg"), ("x", True, "image/jpeg")],
        "too_many_files": [("photo_a", True, "image/jpeg")] * 2 + [("photo_b", True, "image/jpeg")],
        "unexpected_file": [("photo_a", True, "image/jpeg"), ("photo_b", True, "image/jpeg"), ("note", True, "image/jpeg")],
    }
    for code, parts in cases.items():
        assert status_of(lambda: check_form_fields(spec, parts))[1] == code
    wrong_type = [("photo_a", True, "application/pdf"), ("photo_b", True, "image/jpeg")]
    assert status_of(lambda: check_form_fields(spec, wrong_type)) == (415, "wrong_content_type")


def test_decode_maps_every_bad_file_to_a_status(tmp_path):
    statuses = {"empty": 400, "not_an_image": 400, "truncated": 400, "too_many_pixels": 413, "too_small": 422}
    for name, code in write_bad_images(tmp_path).items():
        assert status_of(lambda: decode_photo((tmp_path / name).read_bytes(), "photo", ServeParams())) == (statuses[code], code)


def test_decode_shrinks_large_photos_and_reports_the_factor():
    buffer = io.BytesIO()
    Image.new("RGB", (3000, 1500), (90, 120, 150)).save(buffer, "JPEG")
    image, factor = decode_photo(buffer.getvalue(), "photo", ServeParams(max_side=1000))
    assert image.shape == (500, 1000, 3) and factor == pytest.approx(3.0)


def test_matching_respects_threshold_and_cannot_link():
    medoids = MedoidSet("m+1", np.array([7, 9]), ["Ann", None], np.stack([unit([1, 0, 0]), unit([0, 1, 0])]))
    faces = np.stack([unit([1, 0.05, 0]), unit([1, 0.2, 0]), unit([0, 0, 1])])
    matches = match_faces(faces, medoids, threshold=0.9)
    assert (matches[0].identity_id, matches[0].name) == (7, "Ann")  # the most similar face claims identity 7
    assert matches[1].identity_id is None and matches[1].similarity > 0.9  # same photo: not Ann twice
    assert matches[2].identity_id is None and matches[2].similarity == pytest.approx(0.0, abs=1e-6)
    assert match_faces(faces, MedoidSet("m+1", np.array([], np.int64), [], np.zeros((0, 0))), 0.9)[0].identity_id is None


def test_verify_answer_finds_the_person_of_b_anywhere_in_a_and_needs_faces():
    # A group photo: a blurred face, a stranger, and (small, off-centre) the person of B.
    a = PhotoFaces([face([1, 0, 0], size=200, failures=["blur"]), face([0, 0, 1], size=150),
                    face([0.6, 0.8, 0], size=60, at=(300.0, 10.0))], 1, (400, 400))
    b = PhotoFaces([face([0.6, 0.8, 0])], 0, (100, 100))
    answer = verify_answer(a, b, (2.0, 1.0), 0.9, MODEL)
    assert answer["same"] is True and answer["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert answer["photo_a"]["box"] == [600.0, 20.0, 120.0, 120.0]  # the match, scaled back to the upload
    assert [entry["similarity"] for entry in answer["faces_a"]] == [None, pytest.approx(0.0, abs=1e-4),
                                                                      pytest.approx(1.0, abs=1e-4)]
    assert answer["model_version"] == "m+1" and answer["faces"] == [3, 1]
    stranger = PhotoFaces([face([0, 0, 1])], 0, (100, 100))
    assert verify_answer(a, stranger, (1.0, 1.0), 0.9, MODEL)["photo_a"]["box"] == [10.0, 10.0, 150.0, 150.0]
    assert verify_answer(PhotoFaces(a.faces[2:], 0, (400, 400)), stranger, (1.0, 1.0), 0.9, MODEL)["same"] is False
    with pytest.raises(ServingError) as caught:
        verify_answer(a, PhotoFaces([], None, (100, 100)), (1.0, 1.0), 0.9, MODEL)
    assert (caught.value.status, caught.value.code, caught.value.field) == (422, "no_face", "photo_b")


def test_identify_answer_does_not_match_faces_failing_quality():
    medoids = MedoidSet("m+1", np.array([3]), ["Bo"], unit([1, 0, 0])[None])
    faces = [face([1, 0, 0]), face([1, 0, 0], failures=["min_face_px"])]
    matches = match_faces(np.stack([faces[0].embedding]), medoids, 0.9)
    answer = identify_answer(faces, matches, 1.0, 0.9, MODEL)
    assert answer["faces"][0]["identity"] == 3 and answer["faces"][0]["name"] == "Bo"
    assert answer["faces"][1]["identity"] == "unknown" and "min_face_px" in answer["faces"][1]["reason"]


def test_model_holder_keeps_not_ready_with_the_reason_when_nothing_resolves():
    def broken(alias):
        raise ModelUnavailable(f"cannot resolve the {alias!r} model: registry down")

    holder = ModelHolder(resolver=broken)
    with pytest.raises(ModelUnavailable):
        holder.refresh()
    assert not holder.ready and "registry down" in holder.last_error
    with pytest.raises(ModelUnavailable, match="registry down"):
        holder.current


def test_greedy_batching_keeps_the_cost_fit_and_drops_the_hold():
    from bentoml._internal.marshal.dispatcher import Optimizer

    from components.serving.batching import use_greedy_batching

    assert use_greedy_batching() and use_greedy_batching()  # idempotent
    optimizer = Optimizer(600.0)
    optimizer.o_stat.extend([(2, 0.2, 3.0), (4, 0.3, 2.5), (8, 0.5, 4.0)])  # (batch size, duration, wait)
    optimizer.trigger_refresh()
    assert optimizer.wait == 0
    assert optimizer.o_a == pytest.approx(0.05, rel=1e-3) and optimizer.o_b == pytest.approx(0.1, rel=1e-3)


def test_the_gate_refuses_every_path_without_the_key_but_probes_and_open_paths():
    import asyncio

    from components.serving.gate import Gate, GateState

    reached = []

    async def app(scope, receive, send):  # the service behind the gate: records what got through
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def call(gate, path, key=None):
        sent = []
        headers = [(b"x-api-key", key.encode())] if key else []
        scope = {"type": "http", "path": path, "method": "GET", "headers": headers}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        asyncio.run(gate(scope, receive, send))
        return sent[0]["status"]

    state = GateState(params=ServeParams(open_paths=("/metrics",)), api_key="k1", configured=True)
    gate = Gate(app, state)
    assert [call(gate, path) for path in ("/docs.json", "/reload", "/", "/metrics")] == [401, 401, 401, 200]
    assert call(gate, "/docs.json", key="k1") == 200 and call(gate, "/docs.json", key="k2") == 401
    assert reached == ["/metrics", "/docs.json"]
