"""The people page in-process (Starlette's test client) on a small synthetic store with real JPEG crops.

The browser tests (tests/integration/test_ui_browser.py) drive the same pages in Chromium
on a store made by `faces run`; these check the rules quickly: sign-in, CSRF, every
correction's effect on the store, undo, and the links each correction leaves behind.
"""

from __future__ import annotations

import io
import re
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from components.identities import IdentityStore, NewFace
from components.identities.lifecycle import Policy, update_identities
from components.settings import load_settings
from components.ui import corrections
from components.ui.app import create_app
from components.ui.security import API_KEY_ENV, PASSWORD_ENV, ConfigurationError, Credentials, SignInThrottle

DIM = 16
T0 = datetime(2024, 7, 1, tzinfo=UTC)
POLICY = Policy(assign_threshold=0.85, cluster_threshold=0.9)
KEY = "test-api-key-1234"
PASSWORD = "correct horse battery staple"


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (150, 150), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def world(tmp_path):
    """Three people (5, 4, 3 photos), two strangers alone in the pool; crops and photos on disk."""
    url = f"sqlite:///{tmp_path / 'faces.db'}"
    store = IdentityStore(url)
    rng = np.random.default_rng(1)
    centres = unit(rng.normal(size=(5, DIM)))
    person_of_face = {}
    for number, person in enumerate([0] * 5 + [1] * 4 + [2] * 3 + [3, 4]):
        crop = f"crops/{number:02d}_0.jpg"
        (tmp_path / crop).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / crop).write_bytes(jpeg((40 * person, 90, 200 - 30 * person)))
        photo = tmp_path / "photos" / f"{number}.jpg"
        photo.parent.mkdir(exist_ok=True)
        Image.new("RGB", (200, 160), (90, 90, 90)).save(photo)
        face = NewFace(face_index=0, box=(20.0, 20.0, 80.0, 90.0), landmarks=np.zeros((5, 2)), confidence=0.99, blur=1.0,
                       failures=[], embedding=unit(centres[person] + rng.normal(scale=0.04, size=DIM)),
                       model_version="test", crop_path=crop)
        store.add_image(f"{uuid.uuid4().hex}{number:032x}", str(photo), (200, 160), [face], "v", None)
    update_identities(store, policy=POLICY, clock=lambda: T0)
    matrix = store.usable_faces()
    for face, embedding in zip(matrix.face_ids, matrix.embeddings):
        person_of_face[int(face)] = int(np.argmax(centres @ embedding))
    owners = store.identity_of_faces()
    identity_of = {person: owners[face] for face, person in person_of_face.items() if face in owners}
    settings = load_settings()
    app = create_app(store, settings, environ={API_KEY_ENV: KEY, PASSWORD_ENV: PASSWORD}, crops_root=str(tmp_path),
                     policy=POLICY)
    return {"store": store, "app": app, "identity": identity_of, "person_of_face": person_of_face, "root": tmp_path}


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def signed_in(world, secret: str = KEY) -> tuple[TestClient, str]:
    client = TestClient(world["app"], base_url="http://127.0.0.1")
    page = client.get("/login")
    answer = client.post("/login", data={"csrf": csrf_of(page.text), "secret": secret, "next": "/"},
                         follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return client, csrf_of(client.get("/").text)


def members(store, identity) -> set[int]:
    return {face for face, owner in store.identity_of_faces().items() if owner == identity}


def test_nothing_is_served_without_signing_in(world):
    client = TestClient(world["app"], base_url="http://127.0.0.1")
    some_face = next(iter(world["person_of_face"]))
    for path in ["/", f"/people/{world['identity'][0]}", f"/faces/{some_face}", f"/faces/{some_face}/thumb.jpg",
                 f"/faces/{some_face}/photo.jpg", "/unknown", "/history"]:
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login"), path
    answer = client.post(f"/people/{world['identity'][0]}/hide", data={}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    assert world["store"].links().must == [] and not corrections.recent(world["store"])


def test_wrong_secret_is_refused_and_either_secret_opens_a_session(world):
    client = TestClient(world["app"], base_url="http://127.0.0.1")
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"csrf": token, "secret": "guess"}, follow_redirects=False)
    assert answer.status_code == 401 and "neither the API key nor the password" in answer.text
    assert client.get("/", follow_redirects=False).status_code == 303
    for secret in (KEY, PASSWORD):
        client, _ = signed_in(world, secret)
        page = client.get("/")
        assert page.status_code == 200 and "People" in page.text
    login = TestClient(world["app"], base_url="http://127.0.0.1")
    token = csrf_of(login.get("/login").text)
    header = login.post("/login", data={"csrf": token, "secret": KEY}, follow_redirects=False).headers["set-cookie"]
    assert "httponly" in header.lower() and "samesite=strict" in header.lower(), header


def test_sign_in_needs_a_configured_secret():
    with pytest.raises(ConfigurationError, match="FACES_API_KEY"):
        Credentials.from_environment({})
    assert Credentials.from_environment({API_KEY_ENV: " k "}).check("k") == "api-key"
    assert Credentials.from_environment({PASSWORD_ENV: "p"}).check("") is None


def test_the_ui_reads_the_serving_gate_key_variable():
    import ast
    from pathlib import Path

    source = Path(__file__).resolve().parents[2] / "components" / "serving" / "requests.py"
    tree = ast.parse(source.read_text())
    values = [node.value.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
              and any(getattr(target, "id", None) == "API_KEY_ENV" for target in node.targets)]
    assert values == [API_KEY_ENV]


def test_repeated_wrong_secrets_are_slowed_down():
    moments = iter(range(100))
    throttle = SignInThrottle(max_failures=2, window_s=10, clock=lambda: next(moments))
    assert not throttle.blocked("a")
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.blocked("a") and not throttle.blocked("b")


def test_a_form_without_the_csrf_token_is_refused(world):
    client, token = signed_in(world)
    identity = world["identity"][0]
    for data in ({"name": "Mallory"}, {"name": "Mallory", "csrf": "forged"}):
        answer = client.post(f"/people/{identity}/rename", data=data, follow_redirects=False)
        assert answer.status_code == 403 and "CSRF" in answer.text
    assert world["store"].identity_list()[0]["name"] is None
    answer = client.post(f"/people/{identity}/rename", data={"name": "Alice", "csrf": token}, follow_redirects=False)
    assert answer.status_code == 303
    assert {row["id"]: row["name"] for row in world["store"].identity_list()}[identity] == "Alice"


def test_pages_show_people_faces_pictures_and_clusters(world):
    client, _ = signed_in(world)
    people = client.get("/?sort=size")
    assert people.status_code == 200 and people.text.count('class="person"') == 3
    assert "content-security-policy" in people.headers and people.headers["x-frame-options"] == "DENY"
    identity = world["identity"][0]
    person = client.get(f"/people/{identity}")
    faces = [int(face) for face in re.findall(r'name="face" value="(\d+)"', person.text)]
    assert sorted(faces) == sorted(members(world["store"], identity))
    similarities = [float(value) for value in re.findall(r'value="\d+"> (-?[0-9.]+)', person.text)]
    assert similarities == sorted(similarities), "least similar to the medoid first"
    thumb = client.get(f"/faces/{faces[0]}/thumb.jpg")
    assert thumb.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size == (112, 112)
    photo = client.get(f"/faces/{faces[0]}/photo.jpg")
    pixels = np.asarray(Image.open(io.BytesIO(photo.content)).convert("RGB")).astype(int)
    assert pixels[20, 50, 1] > 150 and pixels[80, 150, 1] < 120, "the box is drawn in green on the grey photo"
    assert client.get("/faces/999999/thumb.jpg").status_code == 404
    unknown = client.get("/unknown")
    assert unknown.text.count('class="cluster"') == 2 and unknown.text.count('class="accept"') >= 2


def test_search_sort_hide_and_pagination(world):
    client, token = signed_in(world)
    a, b, c = (world["identity"][p] for p in (0, 1, 2))
    for identity, name in ((a, "Zoe 100%"), (b, "adam"), (c, "Bea")):
        client.post(f"/people/{identity}/rename", data={"name": name, "csrf": token})
    listed = client.get("/?sort=name").text
    assert [m for m in re.findall(r'class="name" href="/people/\d+">([^<]+)<', listed)] == ["adam", "Bea", "Zoe 100%"]
    assert re.findall(r'class="name" href="/people/\d+">([^<]+)<', client.get("/?q=100%25").text) == ["Zoe 100%"]
    assert re.findall(r'class="name" href="/people/\d+">([^<]+)<', client.get("/?q=_").text) == []
    client.post(f"/people/{b}/hide", data={"csrf": token})
    assert "adam" not in client.get("/").text and "adam" in client.get("/?hidden=1").text
    from components.ui import queries

    page = queries.people(world["store"], sort="size", per_page=1, page=2)
    assert page.total == 2 and page.pages == 2 and len(page.items) == 1


def test_merge_move_not_this_person_and_their_links(world):
    store = world["store"]
    client, token = signed_in(world)
    a, b, c = (world["identity"][p] for p in (0, 1, 2))
    moved_in, stayed = members(store, b), members(store, a)
    client.post("/people/merge", data={"person": [str(a), str(b)], "csrf": token})
    assert members(store, a) == moved_in | stayed and b not in {row["id"] for row in store.identity_list()}
    # Each moved face is must-linked with the medoid the kept person had: the merge outlives re-clustering.
    linked = {face for pair in store.links().must for face in pair}
    assert moved_in <= linked and len(linked & stayed) == 1

    face = sorted(members(store, a))[0]
    client.post(f"/faces/{face}/not-this-person", data={"csrf": token})
    assert face not in members(store, a) and face in store.pool_face_ids()
    assert any(face in pair for pair in store.links().cannot)

    two = sorted(members(store, c))[:2]
    answer = client.post(f"/people/{c}/move", data={"face": [str(f) for f in two], "to": "new", "new_name": "Cy",
                                                    "csrf": token}, follow_redirects=True)
    assert "moved 2 face(s)" in answer.text
    new_id = store.identity_of_faces()[two[0]]
    assert new_id not in (a, b, c) and {row["id"]: row["name"] for row in store.identity_list()}[new_id] == "Cy"

    answer = client.post(f"/people/{c}/move", data={"face": str(two[0]), "to": "person", "target": str(c),
                                                    "csrf": token}, follow_redirects=True)
    assert "are not in person" in answer.text, "an out-of-date selection is refused with a message"

    constraints = store.constraints()
    assert constraints["cannot_link"] and constraints["must_link"]
    assert len({constraints["groups"][f] for f in two}) == 1, "the new person's faces form one label group"


def test_accept_reject_new_person_and_undo(world):
    store = world["store"]
    client, token = signed_in(world)
    a = world["identity"][0]
    pool = store.pool_face_ids()
    assert len(pool) == 2
    client.post("/unknown/reject", data={"face": str(pool[0]), "person": str(a), "csrf": token})
    unknown = client.get("/unknown").text
    section = unknown[unknown.index(f'data-key="{pool[0]}"'):]
    section = section[: section.index("</section>")]
    assert f'data-person="{a}"' not in section, "a rejected person is no longer suggested"
    client.post("/unknown/accept", data={"face": str(pool[1]), "person": str(a), "csrf": token})
    assert store.identity_of_faces()[pool[1]] == a
    client.post("/unknown/new-person", data={"cluster": [str(pool[0])], "name": "Dee", "csrf": token})
    created = store.identity_of_faces()[pool[0]]
    assert {row["id"]: row["name"] for row in store.identity_list()}[created] == "Dee"

    history = client.get("/history").text
    assert history.count('class="undo-this"') == 1
    client.post("/undo", data={"csrf": token})  # the new person
    assert pool[0] in store.pool_face_ids() and created not in {row["id"] for row in store.identity_list()}
    client.post("/undo", data={"csrf": token})  # the accept
    assert pool[1] in store.pool_face_ids()
    client.post("/undo", data={"csrf": token})  # the reject: its cannot-link goes
    assert store.links().cannot == [] and store.links().must == []
    answer = client.post("/undo", data={"csrf": token}, follow_redirects=True)
    assert "nothing to undo" in answer.text


def test_undo_of_a_merge_restores_the_person_and_refuses_after_a_change(world):
    store = world["store"]
    a, b = world["identity"][0], world["identity"][1]
    corrections.rename(store, b, "Bob", actor="t")
    before_a, before_b = members(store, a), members(store, b)
    corrections.merge(store, a, [b], actor="t", policy=POLICY)
    corrections.undo(store, actor="t", policy=POLICY)
    assert members(store, a) == before_a and members(store, b) == before_b
    assert {row["id"]: row["name"] for row in store.identity_list()}[b] == "Bob"
    assert store.links().must == []

    corrections.merge(store, a, [b], actor="t", policy=POLICY)
    update_identities(store, policy=POLICY, clock=lambda: T0, full=True)  # faces may move again
    moved = corrections.move(store, [sorted(before_b)[0]], a, corrections.UNKNOWN, actor="t", policy=POLICY)
    assert moved["to"] is None
    corrections.not_this_person(store, sorted(before_a)[0], actor="t", policy=POLICY)
    corrections.undo(store, actor="t", policy=POLICY)  # the not-this-person
    store.add_image(uuid.uuid4().hex, "x.jpg", (10, 10), [], "v", None)
    with store.session() as session:  # someone else puts the moved face into a person meanwhile
        from components.identities import store as db

        session.execute(db.PoolFaceRow.__table__.delete().where(db.PoolFaceRow.face_id == sorted(before_b)[0]))
        session.add(db.AssignmentRow(face_id=sorted(before_b)[0], identity_id=a, similarity=0.0, method="manual"))
    with pytest.raises(corrections.CorrectionError, match="changed since"):
        corrections.undo(store, actor="t", policy=POLICY)


def test_delete_removes_faces_crops_and_thumbnails(world):
    store = world["store"]
    client, token = signed_in(world)
    identity = world["identity"][2]
    faces = sorted(members(store, identity))
    assert client.get(f"/faces/{faces[0]}/thumb.jpg").status_code == 200
    answer = client.post(f"/people/{identity}/delete", data={"csrf": token}, follow_redirects=True)
    assert "tick the box" in answer.text and members(store, identity)
    answer = client.post(f"/people/{identity}/delete", data={"csrf": token, "confirm": "yes"}, follow_redirects=True)
    assert f"deleted #{identity}" in answer.text
    assert not members(store, identity) and store.counts()["faces"] == 14 - len(faces)
    assert not any((world["root"] / f"crops/{n:02d}_0.jpg").exists() for n in range(9, 12))
    assert client.get(f"/faces/{faces[0]}/thumb.jpg").status_code == 404
