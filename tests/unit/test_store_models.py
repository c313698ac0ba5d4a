"""The identity store holds one model's embeddings at a time (no real model needed: vectors are given)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from components.identities import IdentityStore, NewFace, Policy, update_identities
from components.identities import store as db
from components.identities.lifecycle import ReembedIncomplete, switch_model
from components.identities.store import ModelMismatchError, StoreModel

OLD = StoreModel("net+old", None, "local", {"verify": 0.9, "cluster": 0.9, "assign": 0.9})
NEW = StoreModel("net+new", 2, "registry", {"verify": 0.8, "cluster": 0.85, "assign": 0.85})
POLICY = Policy(assign_threshold=0.9, cluster_threshold=0.9, recluster_pool_size=1)
AT = datetime(2026, 1, 1, tzinfo=UTC)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def people(seed: int, n_people: int = 3, per_person: int = 4, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(n_people, 16)))
    return unit(np.repeat(centres, per_person, axis=0) + noise * rng.normal(size=(n_people * per_person, 16)))


def fill(store: IdentityStore, vectors: np.ndarray, version: str) -> None:
    for number, vector in enumerate(vectors):
        face = NewFace(face_index=0, box=(0, 0, 50, 50), landmarks=np.zeros((5, 2)), confidence=1.0, blur=1.0,
                       failures=[], embedding=vector, model_version=version, crop_path=f"crops/{number}.jpg")
        store.add_image(f"{number:064d}", f"p{number}.jpg", (100, 100), [face], "test", None)


@pytest.fixture
def store(tmp_path) -> IdentityStore:
    store = IdentityStore(f"sqlite:///{tmp_path / 'faces.db'}")
    assert store.adopt_model(OLD) == store.model("active")
    fill(store, people(0), OLD.version)
    update_identities(store, policy=POLICY, clock=lambda: AT, full=True)
    db.CROSS_VERSION_REFUSALS.clear()
    return store


def test_adopting_twice_keeps_the_first_model(store):
    assert store.adopt_model(NEW).version == OLD.version
    assert store.model("active").thresholds == OLD.thresholds


def test_a_photo_embedded_by_another_model_is_not_stored(store):
    before = store.counts()
    face = NewFace(face_index=0, box=(0, 0, 50, 50), landmarks=np.zeros((5, 2)), confidence=1.0, blur=1.0,
                   failures=[], embedding=people(1)[0], model_version=NEW.version, crop_path="crops/new.jpg")
    with pytest.raises(ModelMismatchError, match="net\\+new"):
        store.add_image("f" * 64, "new.jpg", (100, 100), [face], "test", None)
    assert store.counts() == before
    assert db.CROSS_VERSION_REFUSALS["add_image"] == 1


def test_queries_refuse_to_put_two_models_side_by_side(store):
    with store.session() as session:  # a face written behind the store's back, by another model
        row = session.get(db.FaceRow, 1)
        row.model_version = NEW.version
    with pytest.raises(ModelMismatchError, match="cannot be compared"):
        store.usable_faces()
    assert db.CROSS_VERSION_REFUSALS["usable faces"] == 1


def test_switch_needs_every_face_then_moves_all_and_recomputes_medoids(store):
    store.begin_reembed(NEW)
    todo = store.reembed_todo(NEW.version, limit=100)
    assert len(todo) == 12 and store.reembed_remaining(NEW.version) == 12
    vectors = people(7)  # the new model: other vectors, same people (rows in the same order)
    store.stage_embeddings([face for face, _ in todo[:5]], NEW.version, vectors[:5])
    with pytest.raises(ReembedIncomplete, match="7 faces"):
        switch_model(store, NEW, POLICY, now=AT)
    assert set(store.embedded_versions()) == {OLD.version} and store.model("active").version == OLD.version
    store.stage_embeddings([face for face, _ in todo[5:]], NEW.version, vectors[5:])
    report = switch_model(store, NEW, Policy(assign_threshold=0.85, cluster_threshold=0.85), now=AT)
    assert report["faces"] == 12 and report["incoherent"] == []
    assert store.embedded_versions() == {NEW.version: 12}
    assert store.model("active").thresholds == NEW.thresholds and store.model("target") is None
    with store.session() as session:
        for identity, medoid in session.execute(db.select(db.IdentityRow.id, db.IdentityRow.medoid_face_id)).all():
            ids, _, members = db.identity_members(session, [identity])
            similarity = members @ members.T
            assert medoid == ids[int(np.argmax(similarity.sum(axis=1)))]  # the new vectors' medoid
    assert dict(db.CROSS_VERSION_REFUSALS) == {}


def test_switch_reports_identities_that_no_longer_cohere(store):
    store.begin_reembed(NEW)
    todo = store.reembed_todo(NEW.version, limit=100)
    scattered = unit(np.random.default_rng(3).normal(size=(12, 16)))  # the new model tears everyone apart
    store.stage_embeddings([face for face, _ in todo], NEW.version, scattered)
    report = switch_model(store, NEW, Policy(assign_threshold=0.85, cluster_threshold=0.85), now=AT)
    assert len(report["incoherent"]) == store.counts()["identities"] >= 3


def test_a_pool_reclustering_marks_only_the_faces_it_read(store):
    """A face pooled by a concurrent assign after the re-clustering read the pool stays fresh."""
    from components.identities.lifecycle import _apply_pool_plan, plan_pool

    fill_more = people(5, n_people=1, per_person=3, noise=0.5)  # three loose faces: they stay in the pool
    for number, vector in enumerate(fill_more, start=100):
        face = NewFace(face_index=0, box=(0, 0, 50, 50), landmarks=np.zeros((5, 2)), confidence=1.0, blur=1.0,
                       failures=[], embedding=vector, model_version=OLD.version, crop_path=f"crops/{number}.jpg")
        store.add_image(f"{number:064d}", f"p{number}.jpg", (100, 100), [face], "test", None)
    with store.session() as session:
        new = db.unseen_faces(session)
        session.add_all(db.PoolFaceRow(face_id=int(face), reclustered=False) for face in new.face_ids[:2])
    with store.session() as session:
        pool, _ = db.pool_matrix(session)  # the re-clustering reads faces 1 and 2 ...
        session.add(db.PoolFaceRow(face_id=int(new.face_ids[2]), reclustered=False))  # ... a batch pools face 3
        ids, medoids = db.identity_medoids(session)
        plan = plan_pool(pool.embeddings, pool.photo_ids, medoids, replace(POLICY, min_identity_size=5), keys=ids.tolist())
        _apply_pool_plan(session, pool.face_ids, ids, plan, POLICY, AT)
    with store.session() as session:
        fresh = dict(session.execute(db.select(db.PoolFaceRow.face_id, db.PoolFaceRow.reclustered)).all())
    assert fresh[int(new.face_ids[2])] is False
    assert all(fresh[int(face)] is True for face in pool.face_ids if int(face) in fresh)


def test_the_same_photos_stored_by_four_batches_at_once_on_postgresql():
    """Check-then-insert races on the sha256: each photo is stored once, no batch fails."""
    from tests.databases import fresh_database, url_of

    with fresh_database("faces_race") as name:
        url = url_of(name)
        stores = []
        try:
            _race(url, stores)
        finally:
            for store in stores:
                store.engine.dispose()


def _race(url: str, stores: list) -> None:
    """Four batches store the same 20 photos at once into the store at ``url``."""
    import threading

    IdentityStore(url).engine.dispose()  # tables once, before the race
    vectors = people(9, n_people=5, per_person=4)
    barrier, errors = threading.Barrier(4), []
    stores.extend(IdentityStore(url) for _ in range(4))

    def batch(store: IdentityStore, order: list[int]) -> None:
        barrier.wait()
        try:
            for number in order:
                face = NewFace(face_index=0, box=(0, 0, 50, 50), landmarks=np.zeros((5, 2)), confidence=1.0,
                               blur=1.0, failures=[], embedding=vectors[number], model_version=None,
                               crop_path=f"crops/{number}.jpg")
                store.add_image(f"{number:064d}", f"p{number}.jpg", (100, 100), [face], "test", None)
        except Exception as error:  # noqa: BLE001 - any failure of a batch is the finding
            errors.append(error)

    orders = [list(range(20)), list(range(19, -1, -1)), list(range(0, 20, 2)) + list(range(1, 20, 2)), list(range(20))]
    threads = [threading.Thread(target=batch, args=(store, order)) for store, order in zip(stores, orders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    counts = IdentityStore(url).counts()
    assert (counts["images"], counts["faces"]) == (20, 20)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize("first", ["switch", "photo"])
def test_a_photo_stored_while_the_store_switches_models_never_mixes_them(database, first, tmp_path):
    """A batch stores a photo embedded by the old model while a re-embed switches the store to the new one.

    Two stores on one database (an ingest process and the re-embed). Whichever transaction
    gets to its commit first is held there for a moment while the other runs: the photo
    then either goes in before the switch and is counted as a face to re-embed (the switch
    stops, ``ReembedIncomplete``), or waits for the switch and is refused (``ModelMismatchError``,
    embed it again); never an old-model face in a store of the new model.
    """
    import threading
    from contextlib import ExitStack

    from sqlalchemy import event

    from tests.databases import fresh_database, url_of

    with ExitStack() as stack:
        url = (f"sqlite:///{tmp_path / 'faces.db'}" if database == "sqlite"
               else url_of(stack.enter_context(fresh_database("faces_switch"))))
        reembedding, ingesting = IdentityStore(url), IdentityStore(url)
        stack.callback(reembedding.engine.dispose)
        stack.callback(ingesting.engine.dispose)
        reembedding.adopt_model(OLD)
        fill(reembedding, people(0), OLD.version)
        reembedding.begin_reembed(NEW)
        todo = reembedding.reembed_todo(NEW.version, limit=100)
        reembedding.stage_embeddings([face for face, _ in todo], NEW.version, people(7))
        late = NewFace(face_index=0, box=(0, 0, 50, 50), landmarks=np.zeros((5, 2)), confidence=1.0, blur=1.0,
                       failures=[], embedding=people(1)[0], model_version=OLD.version, crop_path="crops/late.jpg")

        at_commit, go_on = threading.Event(), threading.Event()

        def hold(_session) -> None:  # the first writer waits at its commit while the other one runs
            at_commit.set()
            go_on.wait(timeout=3)

        event.listen((reembedding if first == "switch" else ingesting)._sessions, "before_commit", hold)
        outcome: dict = {}

        def switch() -> None:
            try:
                outcome["switch"] = switch_model(reembedding, NEW, POLICY, now=AT)
            except ReembedIncomplete as error:
                outcome["switch"] = error

        def store_photo() -> None:
            try:
                outcome["photo"] = ingesting.add_photos([db.NewPhoto("e" * 64, "late.jpg", (100, 100), [late], "test")])
            except ModelMismatchError as error:
                outcome["photo"] = error

        threads = {"switch": threading.Thread(target=switch), "photo": threading.Thread(target=store_photo)}
        second = "photo" if first == "switch" else "switch"
        threads[first].start()
        assert at_commit.wait(timeout=30)
        threads[second].start()
        threads[second].join(timeout=1.5)  # with the lock it waits for the first one's commit
        go_on.set()
        for thread in threads.values():
            thread.join(timeout=60)
            assert not thread.is_alive()

        versions = reembedding.embedded_versions()
        assert len(versions) == 1, f"the store mixes two models: {versions}"
        if first == "switch":  # switched first: the photo finds the new model active and is refused
            assert versions == {NEW.version: 12} and isinstance(outcome["photo"], ModelMismatchError), outcome
        else:  # the photo first: the switch counts it as not yet re-embedded and changes nothing
            assert isinstance(outcome["switch"], ReembedIncomplete), outcome
            assert versions == {OLD.version: 13} and reembedding.model("active").version == OLD.version
