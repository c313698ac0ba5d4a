"""The identity store under concurrent writers, on PostgreSQL (the production store) and SQLite.

Four batches store overlapping photos and run the life cycle's assign step while a
fifth writer keeps re-clustering the pool, all at once on one database. Afterwards:
every photo is stored once, every usable face is either assigned or pooled (never
both, never neither), identity sizes match their assignments, and no writer failed.
No model is needed: the vectors are given.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from tests.databases import fresh_database, url_of

from components.identities import IdentityStore, NewFace, Policy
from components.identities import store as db
from components.identities.lifecycle import assign_new, full_recluster, recluster_pool

POLICY = Policy(assign_threshold=0.9, cluster_threshold=0.9, recluster_pool_size=1, min_identity_size=2)
AT = datetime(2026, 1, 1, tzinfo=UTC)
PHOTOS = 40


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def vectors(seed: int = 3, n_people: int = 8, per_person: int = PHOTOS // 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(n_people, 16)))
    return unit(np.repeat(centres, per_person, axis=0) + 0.05 * rng.normal(size=(n_people * per_person, 16)))


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database on the machine's server, dropped afterwards."""
    with fresh_database("faces_locks") as name:
        yield url_of(name)


@pytest.fixture(params=["postgresql", "sqlite"])
def store_url(request, tmp_path):
    """The production store (PostgreSQL) and the default one (a SQLite file, the local stack's)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'faces.db'}"
    return request.getfixturevalue("postgres_url")


def face(vector: np.ndarray, index: int = 0) -> NewFace:
    return NewFace(face_index=index, box=(0, 0, 50, 50), landmarks=np.zeros((5, 2)), confidence=1.0, blur=1.0,
                   failures=[], embedding=vector, model_version="net+test", crop_path=f"crops/{index}.jpg")


def invariants(url: str) -> dict:
    """What must hold after any interleaving: every usable face in exactly one of assignments and the pool."""
    from sqlalchemy import func, select

    store = IdentityStore(url)
    try:
        with store.session() as session:
            usable = set(session.scalars(select(db.FaceRow.id).where(db.FaceRow.passed.is_(True),
                                                                      db.FaceRow.embedding.is_not(None))))
            assigned = set(session.scalars(select(db.AssignmentRow.face_id)))
            pooled = set(session.scalars(select(db.PoolFaceRow.face_id)))
            sizes = dict(session.execute(select(db.IdentityRow.id, db.IdentityRow.size)).all())
            members = dict(session.execute(select(db.AssignmentRow.identity_id, func.count())
                                           .group_by(db.AssignmentRow.identity_id)).all())
            images = session.scalar(select(func.count()).select_from(db.ImageRow))
            distinct = session.scalar(select(func.count(func.distinct(db.ImageRow.sha256))))
        return {"usable": usable, "assigned": assigned, "pooled": pooled, "sizes": sizes, "members": members,
                "images": images, "distinct": distinct}
    finally:
        store.engine.dispose()


def run_at_once(jobs: list, timeout: float = 120) -> list[BaseException]:
    """Start every job at the same moment (a barrier), wait for all; the errors they raised."""
    barrier, errors = threading.Barrier(len(jobs)), []

    def wrap(job):
        barrier.wait()
        try:
            job()
        except BaseException as error:  # noqa: BLE001 - any failure of a writer is the finding
            errors.append(error)

    threads = [threading.Thread(target=wrap, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a writer is stuck (a lock never released?)"
    return errors


def test_four_batches_and_a_reclustering_at_once_keep_every_face_in_exactly_one_place(store_url):
    IdentityStore(store_url).engine.dispose()  # tables once, before the race
    x = vectors()
    stores = [IdentityStore(store_url) for _ in range(5)]
    # Overlapping batches in different orders: most photos are offered by two batches at once.
    orders = [list(range(0, PHOTOS)), list(range(PHOTOS - 1, -1, -1)), list(range(0, PHOTOS, 2)),
              list(range(1, PHOTOS, 2))]
    finished = threading.Event()

    def batch(store: IdentityStore, order: list[int]) -> None:
        for step, number in enumerate(order):
            store.add_image(f"{number:064d}", f"p{number}.jpg", (100, 100), [face(x[number])], "test", None)
            if step % 3 == 2:  # assign every few photos, as shards of a batch would
                assign_new(store, POLICY, now=AT + timedelta(seconds=step))
        assign_new(store, POLICY, now=AT + timedelta(minutes=1))

    def reclusterer(store: IdentityStore) -> None:
        for round_ in range(12):
            recluster_pool(store, POLICY, now=AT + timedelta(seconds=round_), force=True)
        full_recluster(store, POLICY, now=AT + timedelta(seconds=30))

    try:
        errors = run_at_once([*(lambda s=s, o=o: batch(s, o) for s, o in zip(stores, orders)),
                              lambda: reclusterer(stores[4])])
        finished.set()
        assert errors == [], [repr(error) for error in errors]
        # A last assign (as the next batch would) and a pool re-clustering leave nothing unseen.
        assign_new(stores[0], POLICY, now=AT + timedelta(minutes=2))
        state = invariants(store_url)
        assert state["images"] == state["distinct"] == PHOTOS
        assert len(state["usable"]) == PHOTOS
        assert state["assigned"] & state["pooled"] == set(), "a face both assigned and pooled"
        assert state["usable"] - (state["assigned"] | state["pooled"]) == set(), "a face neither assigned nor pooled"
        assert state["sizes"] == {identity: state["members"].get(identity, 0) for identity in state["sizes"]}
        # The next pool re-clustering works on what the race left (the reported failure was a
        # primary-key error there).
        recluster_pool(stores[0], POLICY, now=AT + timedelta(minutes=3), force=True)
    finally:
        for store in stores:
            store.engine.dispose()


def test_workers_opening_a_fresh_store_at_once_all_find_its_tables(store_url):
    """Six tasks opening a new store at the same moment: the tables get created, none of them fails.

    On SQLite this is also a test polling the store file that a fresh `faces run` is creating.
    """
    stores: list[IdentityStore] = []
    try:
        errors = run_at_once([lambda: stores.append(IdentityStore(store_url)) for _ in range(6)])
        assert errors == [], [repr(error) for error in errors]
        assert len(stores) == 6 and stores[0].counts()["images"] == 0
    finally:
        for store in stores:
            store.engine.dispose()
