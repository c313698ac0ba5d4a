"""`faces identities ...` as a user runs it (a subprocess), and the life cycle on PostgreSQL.

The store is built through the store API with synthetic embeddings and real crop
files on disk, so no images or models are needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from components.identities import IdentityStore, NewFace, operations
from components.identities.lifecycle import Policy, update_identities

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DIM = 16
T0 = datetime(2024, 7, 1, tzinfo=UTC)
POLICY = Policy(assign_threshold=0.85, cluster_threshold=0.9)
POSTGRES = os.environ.get("FACES_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def build_store(url: str, crops: Path | None) -> dict[int, list[int]]:
    """Three people (4, 3, 2 photos) and a group photo of persons 0 and 1; returns person -> face ids."""
    store = IdentityStore(url)
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(3, DIM)))
    faces_of: dict[int, list[int]] = {0: [], 1: [], 2: []}
    photos = [[0]] * 4 + [[1]] * 3 + [[2]] * 2 + [[0, 1]]
    for number, persons in enumerate(photos):
        faces = []
        for index, person in enumerate(persons):
            crop = f"crops/{number:02d}_{index}.jpg"
            if crops is not None:
                (crops / crop).parent.mkdir(parents=True, exist_ok=True)
                (crops / crop).write_bytes(b"\xff\xd8jpeg")
            faces.append(NewFace(face_index=index, box=(0.0, 0.0, 9.0, 9.0), landmarks=np.zeros((5, 2)), confidence=0.99,
                                 blur=1.0, failures=[], embedding=unit(centres[person] + rng.normal(scale=0.05, size=DIM)),
                                 model_version="test", crop_path=crop))
        store.add_image(f"{uuid.uuid4().hex}{number:032x}", f"photos/{number}.jpg", (99, 99), faces, "v", None)
    update_identities(store, policy=POLICY, clock=lambda: T0)
    matrix = store.usable_faces()
    for face, embedding in zip(matrix.face_ids, matrix.embeddings):
        faces_of[int(np.argmax(centres @ embedding))].append(int(face))
    store.engine.dispose()
    return faces_of


@pytest.fixture
def workspace(tmp_path) -> dict:
    out = tmp_path / "out"
    out.mkdir()
    url = f"sqlite:///{out / 'faces.db'}"
    faces_of = build_store(url, out)
    store = IdentityStore(url)
    owner = store.identity_of_faces()
    identity_of = {person: owner[faces[0]] for person, faces in faces_of.items()}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["run"]["out_dir"] = str(out)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return {"out": out, "url": url, "store": store, "faces": faces_of, "identity": identity_of,
            "params": tmp_path / "params.yaml"}


def faces_cli(workspace: dict, *args: str, db: bool = True, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "FACES_PARAMS": str(workspace["params"])}
    command = [sys.executable, "-m", "components.cli", "identities", *(["--db", workspace["url"]] if db else []), *args]
    return subprocess.run(command, env=env, input=stdin, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_list_prints_a_table_from_the_default_store(workspace):
    result = faces_cli(workspace, "list", db=False)  # --db defaults to run.out_dir/faces.db
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["id", "name", "faces", "medoid", "face", "updated"]
    assert [int(line.split()[0]) for line in lines[1:4]] == [workspace["identity"][p] for p in (0, 1, 2)]
    assert lines[-1] == "3 identities, 11 faces; 0 faces in the unknown pool"


def test_show_rename_merge_split_and_the_history(workspace):
    a, b, c = (workspace["identity"][p] for p in (0, 1, 2))

    renamed = faces_cli(workspace, "rename", str(c), "Carol")
    assert renamed.returncode == 0, renamed.stderr
    assert json.loads(renamed.stdout) == {"id": c, "name": "Carol", "previous_name": None}

    merged = json.loads(faces_cli(workspace, "merge", str(c), str(b)).stdout)
    assert merged["id"] == c and merged["merged"] == [b] and merged["size"] == 6 and merged["name"] == "Carol"

    moving = workspace["faces"][1][:2]
    split = json.loads(faces_cli(workspace, "split", str(c), *map(str, moving)).stdout)
    assert split["faces_moved"] == 2 and split["size"] == 4

    shown = json.loads(faces_cli(workspace, "show", str(c)).stdout)
    assert shown["name"] == "Carol" and shown["size"] == 4
    assert {face["face_id"] for face in shown["faces"]}.isdisjoint(moving)
    assert [event["action"] for event in shown["history"]] == ["created", "renamed", "merged", "split"]
    assert all(event["actor"].startswith("cli") for event in shown["history"][1:])

    listed = faces_cli(workspace, "list").stdout
    assert "Carol" in listed and f"\n{a} " in listed


def test_delete_asks_first(workspace):
    identity = workspace["identity"][2]
    crops = sorted((workspace["out"] / "crops").iterdir())

    declined = faces_cli(workspace, "delete", str(identity), stdin="n\n")
    assert declined.returncode == 1
    assert "Delete identity" in declined.stderr and "not deleted" in declined.stderr
    assert sorted((workspace["out"] / "crops").iterdir()) == crops

    confirmed = faces_cli(workspace, "delete", str(identity), stdin="yes\n")
    assert confirmed.returncode == 0, confirmed.stderr
    result = json.loads(confirmed.stdout)
    assert result["faces_deleted"] == 2 and result["crops_removed"] == 2
    assert len(list((workspace["out"] / "crops").iterdir())) == len(crops) - 2
    assert identity not in {item["id"] for item in IdentityStore(workspace["url"]).identity_list()}


def test_delete_with_yes_does_not_ask(workspace):
    identity = workspace["identity"][0]
    result = faces_cli(workspace, "delete", str(identity), "--yes")
    assert result.returncode == 0, result.stderr
    assert "Delete identity" not in result.stderr and "[y/N]" not in result.stderr  # no question asked
    assert json.loads(result.stdout)["faces_deleted"] == 5
    # The purge that follows every delete reports on stderr, one line.
    purged = [line for line in result.stderr.splitlines() if line]
    assert len(purged) == 1 and json.loads(purged[0].removeprefix("purged: "))["faces"] == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "999"], "no identity with id 999"),
        (["rename", "999", "X"], "no identity with id 999"),
        (["rename", "{a}", "   "], "must not be empty"),
        (["merge", "{a}", "{a}"], "into itself"),
        (["merge", "{a}", "{b}"], "same photo"),
        (["merge", "{a}", "404"], "no identity with id 404"),
        (["split", "{a}", "99999"], "are not in identity"),
        (["delete", "999", "--yes"], "no identity with id 999"),
    ],
)
def test_errors_exit_2_with_a_message_and_no_traceback(workspace, args, message):
    ids = {"a": workspace["identity"][0], "b": workspace["identity"][1]}
    before = IdentityStore(workspace["url"]).identity_list()
    result = faces_cli(workspace, *[arg.format(**ids) for arg in args])
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert IdentityStore(workspace["url"]).identity_list() == before


def test_a_missing_or_malformed_store_is_a_clear_error(workspace, tmp_path):
    missing = faces_cli({**workspace, "url": f"sqlite:///{tmp_path / 'nope' / 'faces.db'}"}, "list")
    assert missing.returncode == 2 and "no identity store at" in missing.stderr
    assert not (tmp_path / "nope").exists()
    malformed = faces_cli({**workspace, "url": "not a url"}, "list")
    assert malformed.returncode == 2 and "Traceback" not in malformed.stderr
    server = faces_cli({**workspace, "url": "postgresql+psycopg2://nobody:secret@127.0.0.1:1/none"}, "list")
    assert server.returncode == 2 and "cannot use the identity store" in server.stderr
    assert "secret" not in server.stderr


# -- production backend ---------------------------------------------------------------------------


@pytest.fixture
def postgres_url():
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg2")
    schema = f"faces_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(POSTGRES)
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    except sqlalchemy.exc.OperationalError as error:
        admin.dispose()
        pytest.skip(f"PostgreSQL at {POSTGRES} is unreachable: {str(error.orig).strip()}")
    try:
        # Every connection of the store works inside the throwaway schema.
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def test_life_cycle_and_operations_on_postgresql(postgres_url, tmp_path):
    faces_of = build_store(postgres_url, tmp_path)
    store = IdentityStore(postgres_url)
    assert store.engine.dialect.name == "postgresql"
    owner = store.identity_of_faces()
    a, b, c = (owner[faces_of[person][0]] for person in (0, 1, 2))
    assert sorted(len(faces) for faces in faces_of.values()) == [2, 4, 5]
    assert sorted(item["size"] for item in store.identity_list()) == [2, 4, 5]

    # New faces arrive: one joins, a stranger waits; later the window closes.
    rng = np.random.default_rng(5)
    matrix = store.usable_faces()
    near_a = unit(matrix.embeddings[list(matrix.face_ids).index(faces_of[0][0])] + rng.normal(scale=0.02, size=DIM))
    store.add_image("f" * 64, "photos/new.jpg", (99, 99), [
        NewFace(0, (0.0, 0.0, 9.0, 9.0), np.zeros((5, 2)), 0.99, 1.0, [], near_a, "test", None),
        NewFace(1, (0.0, 0.0, 9.0, 9.0), np.zeros((5, 2)), 0.99, 1.0, [], unit(rng.normal(size=DIM)), "test", None),
    ], "v", None)
    report = update_identities(store, policy=POLICY, clock=lambda: T0 + timedelta(minutes=5))
    assert report["assign"]["assigned"] == 1 and report["assign"]["pooled"] == 1
    assert report["pool"]["due"] is False
    assert update_identities(store, policy=POLICY, clock=lambda: T0 + timedelta(hours=2))["pool"]["left_in_pool"] == 1

    operations.rename(store, c, "Dana", actor="test")
    assert operations.merge(store, c, [b], actor="test", policy=POLICY)["size"] == 6
    with pytest.raises(operations.IdentityError, match="same photo"):
        operations.merge(store, c, [a], actor="test", policy=POLICY)
    split = operations.split(store, c, faces_of[1][:1], actor="test", policy=POLICY)
    deleted = operations.delete_identity(store, split["new_id"], crops_root=tmp_path, actor="test")
    assert deleted["faces_deleted"] == 1 and deleted["crops_removed"] == 1

    # A full re-clustering keeps ids and names; an interrupted one changes nothing.
    update_identities(store, policy=POLICY, clock=lambda: T0 + timedelta(hours=3), full=True)
    after = {item["id"]: item["name"] for item in store.identity_list()}
    assert after[a] is None and after[c] == "Dana"
    assert [e["action"] for e in store.events(c)][:4] == ["created", "renamed", "merged", "split"]

    before = (store.identity_list(), store.identity_of_faces(), store.pool_face_ids(), len(store.events()))

    def broken(*args, **kwargs):
        raise RuntimeError("killed midway")

    from components.identities import lifecycle

    original = lifecycle.assign_faces
    lifecycle.assign_faces = broken  # after replace_clustering_in rewrote every table
    try:
        with pytest.raises(RuntimeError, match="killed midway"):
            update_identities(store, policy=POLICY, clock=lambda: T0 + timedelta(hours=4), full=True)
    finally:
        lifecycle.assign_faces = original
    assert (store.identity_list(), store.identity_of_faces(), store.pool_face_ids(), len(store.events())) == before
    store.engine.dispose()
