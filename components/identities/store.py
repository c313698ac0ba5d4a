"""The identity store: photos, faces, identities and assignments in SQL.

SQLite by default (one file beside the run's outputs); any SQLAlchemy URL works,
so production points it at Postgres. Photos are keyed by the sha256 of their bytes,
which makes every ingest idempotent: the same photo, under any path, is stored once.

Tables:

* ``images``, ``faces``: what was ingested (faces keep box, landmarks, quality and
  the embedding as raw float32 bytes).
* ``identities``: one row per person found, with its medoid face and size.
* ``assignments``: face -> identity, with the similarity to the identity's medoid and
  how it got there (``cluster``, ``pool``, ``assign``, ``manual``).
* ``pool_faces``: the unknown pool, usable faces that belong to no identity yet;
  ``reclustered`` says whether a pool re-clustering has already looked at the face.
  A usable face in neither ``assignments`` nor ``pool_faces`` has not been seen by
  the identity life cycle yet (components/identities/lifecycle.py).
* ``identity_events``: the audit trail (who did what to which identity, when).
  ``identity_id`` is a plain integer, not a foreign key, so events outlive the
  identity they describe.
* ``lifecycle_runs``: one row per assignment batch / pool or full re-clustering; the
  latest re-clustering's time starts the next window T.
* ``rejected_files``: files that could not be used, with the reason.
* ``forgotten_faces``: one row per face deleted with its identity (photo sha256 and
  face index, no pixels, no embedding): what ``faces purge`` still has to remove from
  copies outside the store (batch artefacts of the work area, quarantine copies), and
  when it did.
* ``face_rotations``: for a face found only in the photo turned (a sideways photo
  without EXIF orientation), the turn in degrees counter-clockwise; faces found
  upright have no row.
* ``store_locks``: one row per named lock (``lifecycle``, ``model``), written to serialise the
  identity life cycle's writers, and a re-embed's switch with the photos being stored, on
  databases without advisory locks (SQLite); PostgreSQL uses transaction-scoped advisory
  locks instead (:func:`lock_lifecycle`, :func:`lock_store_model`).
* ``store_models``: which model's embeddings the store holds (``active``) and, during a
  re-embed, the model it is moving to (``target``), each with its thresholds.
* ``staged_embeddings``: embeddings computed by a re-embed for the target model, kept
  apart until the switch moves them into ``faces`` in one transaction.
* ``face_links``: the user's corrections as permanent constraints between two faces:
  ``must`` (one person) or ``cannot`` (never one person). They name faces, not identity
  ids, so they survive re-clustering and re-embedding; every step of the life cycle
  honours them (components/identities/lifecycle.py), and :meth:`IdentityStore.constraints`
  exports them as labels for retraining.
* ``hidden_identities``: identities the user hid from the people page.
* ``corrections``: one row per correction made on the people page, with what it changed
  (to undo it) and whether it was undone.

Every face's embedding names the model version that made it, and the store holds one
version at a time: comparisons across versions are refused (:class:`ModelMismatchError`).

Only new tables were added since the first release, so an older store file is
upgraded by ``create_all`` alone: its unassigned faces are simply "not seen yet".
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    exists,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

EMBEDDING_DTYPE = np.float32


def _now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime | None) -> datetime | None:
    """A timezone-aware UTC datetime; SQLite hands back naive ones (stored as UTC)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(String(4096))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(512))  # ground truth when the folder names it
    detector_version: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    faces: Mapped[list[FaceRow]] = relationship(back_populates="image", cascade="all, delete-orphan")


class FaceRow(Base):
    __tablename__ = "faces"
    __table_args__ = (UniqueConstraint("image_id", "face_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    face_index: Mapped[int] = mapped_column(Integer)  # 0 = most confident face of the photo
    box_x: Mapped[float] = mapped_column(Float)
    box_y: Mapped[float] = mapped_column(Float)
    box_w: Mapped[float] = mapped_column(Float)
    box_h: Mapped[float] = mapped_column(Float)
    landmarks: Mapped[str] = mapped_column(String(512))  # JSON [[x, y] x 5]
    confidence: Mapped[float] = mapped_column(Float)
    blur: Mapped[float] = mapped_column(Float)
    passed: Mapped[bool] = mapped_column(Boolean)
    failures: Mapped[str] = mapped_column(String(256), default="")  # comma-separated gate names
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    model_version: Mapped[str | None] = mapped_column(String(128))
    crop_path: Mapped[str | None] = mapped_column(String(4096))
    label: Mapped[str | None] = mapped_column(String(512))  # ground truth for the photo's main face only
    image: Mapped[ImageRow] = relationship(back_populates="faces")
    assignment: Mapped[AssignmentRow | None] = relationship(back_populates="face", cascade="all, delete-orphan")


class IdentityRow(Base):
    __tablename__ = "identities"
    # Never reuse the id of a removed identity (SQLite would, by default): ids are what
    # users and the audit trail refer to.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(512))
    medoid_face_id: Mapped[int] = mapped_column(ForeignKey("faces.id"))
    size: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class AssignmentRow(Base):
    __tablename__ = "assignments"

    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id", ondelete="CASCADE"))
    similarity: Mapped[float] = mapped_column(Float)  # to the identity's medoid
    method: Mapped[str] = mapped_column(String(32))
    face: Mapped[FaceRow] = relationship(back_populates="assignment")


class PoolFaceRow(Base):
    """A usable face in the unknown pool (no identity yet)."""

    __tablename__ = "pool_faces"

    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True)
    # False until a pool re-clustering has seen the face: "fresh" faces are what make one due.
    reclustered: Mapped[bool] = mapped_column(Boolean, default=False)


class IdentityEventRow(Base):
    """One entry of the audit trail.

    Not a foreign key to ``identities``: the trail must outlive the identity (a
    delete is itself recorded). Details hold ids and counts; names only in
    ``renamed`` events, and those are redacted when the identity is deleted.
    """

    __tablename__ = "identity_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    identity_id: Mapped[int] = mapped_column(Integer, index=True)
    action: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(128))


class LifecycleRunRow(Base):
    """One step of the identity life cycle: an assignment batch or a re-clustering."""

    __tablename__ = "lifecycle_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # assign | pool | full
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    details: Mapped[dict] = mapped_column(JSON, default=dict)


RECLUSTER_KINDS = ("pool", "full")


class StoreModelRow(Base):
    """The model whose embeddings the store holds (``active``), or the one a re-embed moves to (``target``)."""

    __tablename__ = "store_models"

    role: Mapped[str] = mapped_column(String(16), primary_key=True)  # active | target
    version: Mapped[str] = mapped_column(String(128))  # content version (Embedder.version)
    registry_version: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # registry | local
    thresholds: Mapped[dict] = mapped_column(JSON)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class StagedEmbeddingRow(Base):
    """An embedding a re-embed computed for the target model, not yet in use."""

    __tablename__ = "staged_embeddings"

    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(128))
    embedding: Mapped[bytes] = mapped_column(LargeBinary)


class FaceLinkRow(Base):
    """A correction as a constraint between two faces (``face_a < face_b``).

    ``must``: the two faces are one person (a merge, a move, an accepted suggestion);
    ``cannot``: they are never one person ("not this person", a move away, a rejected
    suggestion). A pair holds one kind at a time: the latest decision replaces the other.
    Deleting a face deletes its links.
    """

    __tablename__ = "face_links"
    __table_args__ = (UniqueConstraint("face_a", "face_b"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # must | cannot
    face_a: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), index=True)
    face_b: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(128))


class HiddenIdentityRow(Base):
    """An identity the user hid from the people page (it is still assigned faces)."""

    __tablename__ = "hidden_identities"

    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id", ondelete="CASCADE"), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CorrectionRow(Base):
    """One correction made on the people page: what it changed, so it can be undone.

    ``before`` and ``after`` hold the state of what it touched (each face's identity or
    None for the pool, names, hidden flags, identities created or removed); ``links`` the
    face links it added and removed. Undo restores ``before`` when the faces are still
    where ``after`` says.
    """

    __tablename__ = "corrections"

    id: Mapped[int] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(32))
    summary: Mapped[str] = mapped_column(String(1024))
    before: Mapped[dict] = mapped_column(JSON, default=dict)
    after: Mapped[dict] = mapped_column(JSON, default=dict)
    links: Mapped[dict] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(128))
    undone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


LINK_KINDS = ("must", "cannot")


class StoreLockRow(Base):
    """A named lock (``lifecycle``, ``model``): writing its row serialises writers where advisory locks do not exist."""

    __tablename__ = "store_locks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    taken_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FaceRotationRow(Base):
    """A face MTCNN found only in its photo turned: the turn, degrees counter-clockwise (90, 180, 270)."""

    __tablename__ = "face_rotations"

    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True)
    degrees: Mapped[int] = mapped_column(Integer)


class ForgottenFaceRow(Base):
    """A face deleted with its identity, to be removed from every copy outside the store too.

    Keyed by the photo's sha256 and the face's index in it, as the workflow's batch
    artefacts and the quarantine name them; ``purged_at`` is set once ``faces purge``
    removed every copy it knows of.
    """

    __tablename__ = "forgotten_faces"
    __table_args__ = (UniqueConstraint("sha256", "face_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    face_index: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# PostgreSQL advisory lock keys (any constant int64s): the identity life cycle ("faceLIFE"),
# creating the tables ("faceDDL"), the store's active model ("faceMODL").
LIFECYCLE_LOCK_KEY = 0x666163654C494645
SCHEMA_LOCK_KEY = 0x6661636544444C
MODEL_LOCK_KEY = 0x666163654D4F444C


def lock_lifecycle(session: Session) -> None:
    """Serialise the identity life cycle's writers: held until ``session``'s transaction ends.

    Assignment, pool and full re-clustering, re-embed switches and the user's identity
    operations each read the faces, identities and pool and then write them back; two of
    them interleaved (concurrent ``face_ingest`` runs and a ``face_recluster``) would place
    one face twice or recompute a medoid from a stale member list. Each takes this lock
    first, so they run one after the other, and each reads only after the previous one
    committed (every statement of a READ COMMITTED transaction sees what was committed
    before it started).

    PostgreSQL: ``pg_advisory_xact_lock`` (waits; released at commit or rollback).
    Other databases: an ``UPDATE`` of the ``store_locks`` row, which takes SQLite's write
    lock (or a row lock) for the rest of the transaction. Call it before any read.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LIFECYCLE_LOCK_KEY})
        return
    _write_lock_row(session, "lifecycle")


def lock_store_model(session: Session, *, shared: bool = False) -> None:
    """Keep the store's active model from changing under ``session`` until its transaction ends.

    Photos are stored only with embeddings of the store's active model, checked as they
    are inserted, and a re-embed's switch (:func:`components.identities.lifecycle.switch_model`)
    moves every face it counted to the new model. Without this lock a photo checked against
    the old model just before the switch, and committed after the switch counted the faces,
    would leave old-model faces in a store of the new one. Storing photos takes
    it ``shared`` (concurrent batches store at once), the switch exclusively: the switch
    waits for the photos being stored and then counts them as faces to re-embed, and
    photos arriving meanwhile wait and are checked against the new model.

    PostgreSQL: ``pg_advisory_xact_lock_shared`` / ``pg_advisory_xact_lock``. Other
    databases: an ``UPDATE`` of the ``store_locks`` row (SQLite: its one write lock,
    which every write there takes anyway). Call it before reading the active model.
    """
    if session.get_bind().dialect.name == "postgresql":
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        session.execute(text(f"SELECT {function}(:key)"), {"key": MODEL_LOCK_KEY})
        return
    _write_lock_row(session, "model")


def _write_lock_row(session: Session, name: str) -> None:
    """Write the ``store_locks`` row ``name`` (created on first use): the database's write or row lock until commit."""
    taken = session.execute(text("UPDATE store_locks SET taken_at = :at WHERE name = :name"), {"at": _now(), "name": name})
    if taken.rowcount == 0:
        _insert_ignoring_conflict(session, StoreLockRow, {"name": name, "taken_at": _now()}, ["name"])


def _insert_ignoring_conflict(session: Session, table, values: dict, keys: list[str]):
    """``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL, SQLite); the inserted primary key or None.

    On other databases: a plain insert in a savepoint, a unique-key conflict ignored.
    """
    from sqlalchemy.exc import IntegrityError

    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        primary = list(table.__table__.primary_key.columns)
        statement = insert(table).values(**values).on_conflict_do_nothing(index_elements=keys).returning(*primary)
        row = session.execute(statement).first()
        return None if row is None else row[0]
    try:
        with session.begin_nested():
            row = table(**values)
            session.add(row)
            session.flush()
        return row.__mapper__.primary_key_from_instance(row)[0]
    except IntegrityError:
        return None


class RejectedFileRow(Base):
    """A file that could not be used as a photo, with the reason; keyed by path."""

    __tablename__ = "rejected_files"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(String(4096), unique=True)
    code: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str | None] = mapped_column(String(64))


@dataclass
class NewFace:
    """What the pipeline hands the store for one detected face."""

    face_index: int
    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    confidence: float
    blur: float
    failures: list[str]
    embedding: np.ndarray | None
    model_version: str | None
    crop_path: str | None
    label: str | None = None
    rotation: int = 0  # degrees the photo was turned (counter-clockwise) to find the face


@dataclass
class NewPhoto:
    """A photo to store with its faces (:meth:`IdentityStore.add_photos`); ``size`` is (width, height)."""

    sha256: str
    path: str
    size: tuple[int, int]
    faces: list[NewFace]
    detector_version: str
    label: str | None = None


@dataclass(frozen=True)
class RejectedFile:
    """A file that could not be used as a photo, with the reason (:meth:`IdentityStore.add_photos`)."""

    path: str
    code: str
    reason: str
    sha256: str | None = None


class ModelMismatchError(ValueError):
    """Embeddings of two model versions were about to be compared, or stored side by side."""


# How many times a query was asked to put embeddings of several model versions side by side
# (each refused with ModelMismatchError). Tests assert it stays 0 across a promotion.
CROSS_VERSION_REFUSALS = Counter()


@dataclass(frozen=True)
class StoreModel:
    """A model as the store knows it: content version, registry version, thresholds (a dict)."""

    version: str
    registry_version: int | None
    source: str
    thresholds: dict
    since: datetime | None = None

    def describe(self) -> dict:
        return {"model_version": self.version, "registry_version": self.registry_version, "source": self.source,
                "thresholds": dict(self.thresholds),
                "since": as_utc(self.since).isoformat(timespec="seconds") if self.since else None}


def _one_version(versions, what: str) -> str | None:
    """The single model version of rows about to be compared; ModelMismatchError for several."""
    found = {version for version in versions}
    if len(found) > 1:
        CROSS_VERSION_REFUSALS[what] += 1
        raise ModelMismatchError(
            f"{what}: embeddings of model versions {sorted(map(str, found))} cannot be compared; "
            "finish the re-embed (`faces reembed`, or the face_reembed DAG)")
    return next(iter(found), None)


@dataclass
class FaceMatrix:
    """Usable faces as arrays, in face-id order.

    Attributes:
        face_ids: (N,) face ids.
        embeddings: (N, D) float32 embeddings, rows match ``face_ids``.
        labels: ground-truth names (None when the folder names no one).
        photo_ids: (N,) image id of each face (two faces of one photo are never
            one person: the cannot-link constraint).
    """

    face_ids: np.ndarray
    embeddings: np.ndarray
    labels: list[str | None]
    photo_ids: np.ndarray | None = None
    model_version: str | None = None


def _usable():
    return select(FaceRow.id, FaceRow.embedding, FaceRow.label, FaceRow.image_id, FaceRow.model_version).where(
        FaceRow.passed.is_(True), FaceRow.embedding.is_not(None)
    )


def _face_matrix(rows: Sequence) -> FaceMatrix:
    """Rows of (id, embedding, label, image_id) as arrays; one embedding size or a clear error."""
    if not rows:
        return FaceMatrix(np.empty(0, np.int64), np.empty((0, 0), EMBEDDING_DTYPE), [], np.empty(0, np.int64))
    sizes = Counter(len(row.embedding) for row in rows)
    if len(sizes) > 1:
        dims = sorted(size // np.dtype(EMBEDDING_DTYPE).itemsize for size in sizes)
        raise ValueError(
            f"the store holds embeddings of different sizes {dims}: faces from different embedders "
            "cannot be compared; re-embed them with one model"
        )
    version = _one_version((row.model_version for row in rows), "usable faces")
    embeddings = np.stack([np.frombuffer(row.embedding, EMBEDDING_DTYPE) for row in rows])
    return FaceMatrix(
        np.array([row.id for row in rows], np.int64), embeddings, [row.label for row in rows],
        np.array([row.image_id for row in rows], np.int64), version,
    )


def identity_labels(face_ids: np.ndarray, identity_of: dict[int, int]) -> np.ndarray:
    """Each face's identity id; faces in the unknown pool get singleton labels (negative).

    The store's current clustering as labels, for metrics and plots.
    """
    labels = np.array([identity_of.get(int(face), -1) for face in face_ids], np.int64)
    pooled = np.flatnonzero(labels < 0)
    labels[pooled] = -1 - np.arange(len(pooled))  # identity ids are positive, so no clash
    return labels


# -- queries inside a transaction (the life cycle and the operations compose these) -------------


def usable_in(session: Session) -> FaceMatrix:
    """Every usable face (gates passed, embedded), in face-id order."""
    return _face_matrix(session.execute(_usable().order_by(FaceRow.id)).all())



def unseen_faces(session: Session) -> FaceMatrix:
    """Usable faces the life cycle has not handled yet: neither assigned nor in the pool."""
    assigned = exists().where(AssignmentRow.face_id == FaceRow.id)
    pooled = exists().where(PoolFaceRow.face_id == FaceRow.id)
    return _face_matrix(session.execute(_usable().where(~assigned, ~pooled).order_by(FaceRow.id)).all())


def pool_matrix(session: Session) -> tuple[FaceMatrix, np.ndarray]:
    """The unknown pool as arrays, and whether a re-clustering has seen each face."""
    rows = session.execute(
        _usable().add_columns(PoolFaceRow.reclustered).join(PoolFaceRow, PoolFaceRow.face_id == FaceRow.id)
        .order_by(FaceRow.id)
    ).all()
    return _face_matrix(rows), np.array([bool(row.reclustered) for row in rows], bool)


def identity_medoids(session: Session) -> tuple[np.ndarray, np.ndarray]:
    """(identity ids, their medoid embeddings), in id order."""
    rows = session.execute(
        select(IdentityRow.id, FaceRow.embedding, FaceRow.model_version)
        .join(FaceRow, FaceRow.id == IdentityRow.medoid_face_id).order_by(IdentityRow.id)
    ).all()
    if not rows:
        return np.empty(0, np.int64), np.empty((0, 0), EMBEDDING_DTYPE)
    _one_version((row.model_version for row in rows), "identity medoids")
    return np.array([row.id for row in rows], np.int64), np.stack([np.frombuffer(row.embedding, EMBEDDING_DTYPE) for row in rows])


def photo_identities(session: Session, photo_ids: Sequence[int]) -> dict[int, set[int]]:
    """Photo id -> identities that already hold a face of that photo (for cannot-link)."""
    wanted = sorted({int(photo) for photo in photo_ids})
    result: dict[int, set[int]] = {}
    for start in range(0, len(wanted), 500):  # bounded IN lists, whatever the backend's parameter limit
        rows = session.execute(
            select(FaceRow.image_id, AssignmentRow.identity_id)
            .join(AssignmentRow, AssignmentRow.face_id == FaceRow.id)
            .where(FaceRow.image_id.in_(wanted[start : start + 500]))
        ).all()
        for photo, identity in rows:
            result.setdefault(int(photo), set()).add(int(identity))
    return result


def identity_members(session: Session, identity_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face ids, identity ids, embeddings) of every member of the given identities."""
    wanted = sorted({int(identity) for identity in identity_ids})
    rows = []
    for start in range(0, len(wanted), 500):
        rows += session.execute(
            select(FaceRow.id, AssignmentRow.identity_id, FaceRow.embedding, FaceRow.model_version)
            .join(AssignmentRow, AssignmentRow.face_id == FaceRow.id)
            .where(AssignmentRow.identity_id.in_(wanted[start : start + 500]))
        ).all()
    rows.sort(key=lambda row: (row.identity_id, row.id))
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, 0), EMBEDDING_DTYPE)
    _one_version((row.model_version for row in rows), "identity members")
    return (
        np.array([row.id for row in rows], np.int64),
        np.array([row.identity_id for row in rows], np.int64),
        np.stack([np.frombuffer(row.embedding, EMBEDDING_DTYPE) for row in rows]),
    )


def last_recluster_at(session: Session) -> datetime | None:
    """When the pool (or everything) was last re-clustered; None if never."""
    return as_utc(session.scalar(select(func.max(LifecycleRunRow.at)).where(LifecycleRunRow.kind.in_(RECLUSTER_KINDS))))


def add_event(session: Session, identity_id: int, action: str, details: dict, at: datetime, actor: str) -> None:
    """Append one audit event (inside the caller's transaction, so it commits with the change)."""
    session.add(IdentityEventRow(identity_id=int(identity_id), action=action, details=details, at=at, actor=actor))


# -- the user's corrections as constraints (face links) ----------------------------------------


@dataclass
class Links:
    """Face links as pairs of face ids: ``must`` (one person) and ``cannot`` (never one)."""

    must: list[tuple[int, int]] = field(default_factory=list)
    cannot: list[tuple[int, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.must or self.cannot)


def links_in(session: Session, face_ids: Sequence[int] | None = None) -> Links:
    """Every face link, or only those touching one of ``face_ids``."""
    query = select(FaceLinkRow.kind, FaceLinkRow.face_a, FaceLinkRow.face_b).order_by(FaceLinkRow.id)
    rows = []
    if face_ids is None:
        rows = session.execute(query).all()
    else:
        wanted = sorted({int(face) for face in face_ids})
        seen = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for row in session.execute(query.where((FaceLinkRow.face_a.in_(chunk)) | (FaceLinkRow.face_b.in_(chunk)))):
                if (row.face_a, row.face_b) not in seen:
                    seen.add((row.face_a, row.face_b))
                    rows.append(row)
    links = Links()
    for kind, a, b in rows:
        (links.must if kind == "must" else links.cannot).append((int(a), int(b)))
    return links


def set_links_in(session: Session, kind: str, pairs, at: datetime, actor: str) -> list[list]:
    """Record face links of one kind; a pair linked the other way is turned over (latest decision wins).

    Returns:
        ``[kind, a, b, previous kind or None]`` for each pair that changed (for undo).
    """
    if kind not in LINK_KINDS:
        raise ValueError(f"a face link is one of {LINK_KINDS}; got {kind!r}")
    changed = []
    for a, b in {tuple(sorted((int(a), int(b)))) for a, b in pairs if int(a) != int(b)}:
        row = session.scalar(select(FaceLinkRow).where(FaceLinkRow.face_a == a, FaceLinkRow.face_b == b))
        if row is None:
            session.add(FaceLinkRow(kind=kind, face_a=a, face_b=b, at=at, actor=actor))
            changed.append([kind, a, b, None])
        elif row.kind != kind:
            changed.append([kind, a, b, row.kind])
            row.kind, row.at, row.actor = kind, at, actor
    session.flush()
    return sorted(changed)


def drop_links_in(session: Session, face_ids: Sequence[int], kind: str | None = None) -> list[list]:
    """Remove the links of one kind (or all) touching ``face_ids``; returns ``[kind, a, b]`` of each removed."""
    wanted = sorted({int(face) for face in face_ids})
    removed = []
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        query = select(FaceLinkRow).where((FaceLinkRow.face_a.in_(chunk)) | (FaceLinkRow.face_b.in_(chunk)))
        if kind is not None:
            query = query.where(FaceLinkRow.kind == kind)
        for row in session.scalars(query):
            removed.append([row.kind, int(row.face_a), int(row.face_b)])
            session.delete(row)
    session.flush()
    return sorted(removed)


def owners_in(session: Session, face_ids) -> dict[int, int]:
    """face id -> identity id, for those of ``face_ids`` that are assigned."""
    wanted = sorted({int(face) for face in face_ids})
    owners: dict[int, int] = {}
    for start in range(0, len(wanted), 500):
        owners.update((int(face), int(identity)) for face, identity in session.execute(
            select(AssignmentRow.face_id, AssignmentRow.identity_id).where(AssignmentRow.face_id.in_(wanted[start : start + 500]))))
    return owners

def hidden_identity_ids(session: Session) -> set[int]:
    """Identities hidden from the people page."""
    return set(session.scalars(select(HiddenIdentityRow.identity_id)))


def replace_clustering_in(
    session: Session, face_ids: np.ndarray, labels: np.ndarray, embeddings: np.ndarray, medoid_rows: dict[int, int],
    min_size: int, *, at: datetime, actor: str = "pipeline",
) -> dict[int, int]:
    """Replace every assignment by a new clustering of (all) usable faces.

    Each new cluster of at least ``min_size`` faces takes over the existing
    identity it shares the most faces with (greedily, largest overlap first, see
    :func:`components.identities.lifecycle.reconcile_by_overlap`); clusters matching
    no identity create new ones; identities left unmatched are removed. Smaller
    clusters go to the unknown pool (marked as already re-clustered).

    Names survive: a removed identity's name moves to the identity that took most
    of its faces, unless that one already has a name (then the audit trail keeps
    the dropped name in a ``name_dropped`` event).

    Args:
        session: the transaction to work in.
        face_ids: (N,) face ids, rows of ``embeddings``.
        labels: (N,) cluster labels.
        embeddings: (N, D) unit vectors.
        medoid_rows: cluster label -> row index of its medoid.
        min_size: smallest cluster that becomes an identity.
        at: time of the change, for the audit trail.
        actor: who made it.

    Returns:
        cluster label -> identity id, for the clusters that became identities.
    """
    from components.identities.lifecycle import reconcile_by_overlap  # the pure core; imports this module

    face_ids = np.asarray(face_ids)
    labels = np.asarray(labels)
    previous_of = dict(session.execute(select(AssignmentRow.face_id, AssignmentRow.identity_id)).all())
    previous = np.array([previous_of.get(int(face), -1) for face in face_ids], np.int64)
    plan = reconcile_by_overlap(previous, labels, min_size)
    identity_of = dict(plan.matched)
    sizes = Counter(labels.tolist())

    session.execute(delete(AssignmentRow))
    session.execute(delete(PoolFaceRow))
    names = dict(session.execute(select(IdentityRow.id, IdentityRow.name)).all())
    stale = set(names) - set(identity_of.values())
    if stale:
        session.execute(delete(IdentityRow).where(IdentityRow.id.in_(stale)))
    for label in plan.kept:
        medoid_row = medoid_rows[label]
        if label in identity_of:
            identity = session.get(IdentityRow, identity_of[label])
            identity.medoid_face_id = int(face_ids[medoid_row])
            identity.size = sizes[label]
            identity.updated_at = at  # the caller's clock, not the wall clock: re-runs stay identical
        else:
            identity = IdentityRow(medoid_face_id=int(face_ids[medoid_row]), size=sizes[label], updated_at=at)
            session.add(identity)
            session.flush()
            identity_of[label] = identity.id
            add_event(session, identity.id, "created", {"faces": sizes[label], "by": "full_recluster"}, at, actor)
        members = np.flatnonzero(labels == label)
        similarities = embeddings[members] @ embeddings[medoid_row]
        session.add_all(
            AssignmentRow(face_id=int(face_ids[row]), identity_id=identity.id, similarity=float(sim), method="cluster")
            for row, sim in zip(members, similarities)
        )
    kept = set(plan.kept)
    session.add_all(
        PoolFaceRow(face_id=int(face), reclustered=True) for face, label in zip(face_ids, labels) if int(label) not in kept
    )

    # Names are the user's work: carry each removed identity's name to where most of its faces went.
    named_now = {identity for identity, name in names.items() if name is not None and identity not in stale}
    for old in sorted(stale):
        name = names[old]
        shares = sorted(((count, -label) for (label, identity), count in plan.overlaps.items() if identity == old), reverse=True)
        if name is None or not shares:
            add_event(session, old, "removed", {"by": "full_recluster", **({"name": name} if name else {})}, at, actor)
            continue
        target = identity_of[-shares[0][1]]
        if target in named_now:
            add_event(session, target, "name_dropped", {"name": name, "from_identity": old, "by": "full_recluster"}, at, actor)
        else:
            session.get(IdentityRow, target).name = name
            named_now.add(target)
            details = {"from": None, "to": name, "from_identity": old, "by": "full_recluster"}
            add_event(session, target, "renamed", details, at, actor)
        add_event(session, old, "removed", {"by": "full_recluster", "faces_to": target}, at, actor)
    return identity_of


def _refuse_other_models(session: Session, photos: Sequence[NewPhoto]) -> None:
    """Raise ModelMismatchError when a face was embedded by another model than the store's active one.

    Takes the model lock (shared) first: the active model read here stays the active one
    until ``session`` commits its photos (:func:`lock_store_model`).
    """
    lock_store_model(session, shared=True)
    active = session.get(StoreModelRow, "active")
    if active is None:
        return
    for photo in photos:
        for face in photo.faces:
            if face.embedding is not None and face.model_version != active.version:
                CROSS_VERSION_REFUSALS["add_image"] += 1
                raise ModelMismatchError(
                    f"photo {photo.path}: embedded by model {face.model_version}, but the store holds "
                    f"{active.version}; embed it again with the store's model")


def _insert_photo(session: Session, photo: NewPhoto) -> int | None:
    """Insert one photo and its faces in ``session``; None when the photo is already stored.

    INSERT ... ON CONFLICT DO NOTHING on the sha256: when another batch stores the same
    photo at the same moment, one insert wins and this one adds nothing.
    """
    image_id = _insert_ignoring_conflict(session, ImageRow, {
        "sha256": photo.sha256, "path": photo.path, "width": photo.size[0], "height": photo.size[1],
        "label": photo.label, "detector_version": photo.detector_version, "added_at": _now()}, ["sha256"])
    if image_id is None:
        return None
    rows = [
        FaceRow(
            image_id=image_id,
            face_index=face.face_index,
            box_x=face.box[0],
            box_y=face.box[1],
            box_w=face.box[2],
            box_h=face.box[3],
            landmarks=json.dumps(np.round(np.asarray(face.landmarks), 2).tolist()),
            confidence=face.confidence,
            blur=face.blur,
            passed=not face.failures,
            failures=",".join(face.failures),
            embedding=None if face.embedding is None else np.asarray(face.embedding, EMBEDDING_DTYPE).tobytes(),
            model_version=face.model_version,
            crop_path=face.crop_path,
            label=face.label,
        )
        for face in photo.faces
    ]
    session.add_all(rows)
    session.flush()
    session.add_all(FaceRotationRow(face_id=row.id, degrees=int(face.rotation))
                    for row, face in zip(rows, photo.faces) if int(getattr(face, "rotation", 0) or 0) % 360)
    return image_id


def _upsert_rejected(session: Session, path: str, code: str, reason: str, sha256: str | None) -> None:
    """Record (or update) a rejected file: of two batches rejecting it at once, the first insert wins, the other updates."""
    values = {"path": path, "code": code, "reason": reason, "sha256": sha256}
    if _insert_ignoring_conflict(session, RejectedFileRow, values, ["path"]) is None:
        session.execute(update(RejectedFileRow).where(RejectedFileRow.path == path)
                        .values(code=code, reason=reason, sha256=sha256))


def _sqlite_pragmas(connection, _record) -> None:
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA secure_delete=ON")


class IdentityStore:
    """SQLAlchemy-backed store; create one per process and reuse it.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///runs/demo/faces.db`` or
            ``postgresql+psycopg2://user@host/db``.
    """

    def __init__(self, url: str):
        self.url = url
        # SQLite: a writer waits up to a minute for another's write lock (concurrent DAG tasks on
        # the local stack) instead of failing after the driver's default 5 s.
        connect_args = {"timeout": 60} if url.startswith("sqlite") else {}
        self.engine = create_engine(url, future=True, connect_args=connect_args)
        if self.engine.dialect.name == "sqlite":
            # SQLite ignores ON DELETE CASCADE unless asked, per connection; secure_delete overwrites
            # deleted rows with zeros, so a deleted person's embeddings do not linger in free pages.
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._create_schema()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _create_schema(self, attempts: int = 10) -> None:
        """Create the tables a fresh (or upgraded) store lacks, also when other processes open it at once."""
        for attempt in range(attempts):
            try:
                with self.engine.begin() as connection:
                    if self.engine.dialect.name == "postgresql":
                        # One worker creates the tables; the others wait on the lock and find them there.
                        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                    Base.metadata.create_all(connection)
                return
            except OperationalError as error:
                # SQLite's driver runs DDL outside a transaction, so another process can create a table
                # between create_all's check and its CREATE; the next pass finds that table there. (An
                # exclusive lock instead would make every reader opening the store wait for writers.)
                if "already exists" not in str(error.orig) or attempt == attempts - 1:
                    raise

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    # -- ingest -----------------------------------------------------------------

    def find_image(self, sha256: str) -> ImageRow | None:
        with self.session() as session:
            return session.scalar(select(ImageRow).where(ImageRow.sha256 == sha256))

    def rejected_paths(self) -> dict[str, str | None]:
        """Path -> sha256 of every file rejected before (to skip unchanged ones)."""
        with self.session() as session:
            return dict(session.execute(select(RejectedFileRow.path, RejectedFileRow.sha256)).all())

    def add_image(
        self, sha256: str, path: str, size: tuple[int, int], faces: Sequence[NewFace], detector_version: str, label: str | None
    ) -> int:
        """Store a photo and all its faces in one transaction; returns the image id.

        A photo already stored (same bytes) is left as it is and its id returned.

        Raises:
            ModelMismatchError: a face was embedded by another model than the store's
                active one (a promotion happened meanwhile): nothing is stored.
        """
        from sqlalchemy.exc import IntegrityError

        try:
            image_id = self._add_image(sha256, path, size, faces, detector_version, label)
        except IntegrityError:
            image_id = None  # a database without ON CONFLICT: the same race, reported as a conflict
        if image_id is None:
            # Another batch stored the same photo between our check and our insert (the
            # sha256 is unique): it is stored once, and that is the photo's id.
            existing = self.find_image(sha256)
            if existing is None:
                raise RuntimeError(f"photo {path}: its insert conflicted, but no stored photo has its sha256")
            return existing.id
        return image_id

    def _add_image(self, sha256: str, path: str, size: tuple[int, int], faces: Sequence[NewFace], detector_version: str,
                   label: str | None) -> int:
        photo = NewPhoto(sha256=sha256, path=path, size=size, faces=list(faces), detector_version=detector_version,
                         label=label)
        with self.session() as session:
            existing = session.scalar(select(ImageRow.id).where(ImageRow.sha256 == sha256))
            if existing is not None:
                return existing
            _refuse_other_models(session, [photo])
            image_id = _insert_photo(session, photo)
            if image_id is not None:
                session.execute(delete(RejectedFileRow).where(RejectedFileRow.path == path))
            return image_id

    def add_photos(self, photos: Sequence[NewPhoto], rejected: Sequence[RejectedFile] = ()) -> dict:
        """Store many photos with their faces, and files that could not be used, in ONE transaction.

        What a workflow shard stores: one commit instead of one per photo, and a shard
        killed midway leaves nothing of it behind (a re-run stores it whole). Photos
        already stored (same bytes, by this or a concurrent batch) are left as they are:
        ``INSERT ... ON CONFLICT DO NOTHING`` on the sha256.

        Rows are written in one order whatever the batch (photos by sha256, then file
        paths): two shards of overlapping batches committing at once wait for each other
        on the same row first instead of each holding a row the other needs (a deadlock
        PostgreSQL would resolve by failing one of them).

        Returns:
            ``{"stored": [sha256 of each photo added], "already_stored": [sha256 of each
            photo the store had already], "rejected": number of rejected files recorded}``.

        Raises:
            ModelMismatchError: a face was embedded by another model than the store's
                active one (a promotion happened meanwhile): nothing is stored.
        """
        photos = sorted(photos, key=lambda photo: photo.sha256)
        stored, already_stored = [], []
        with self.session() as session:
            _refuse_other_models(session, photos)
            stored_paths = []
            for photo in photos:
                if _insert_photo(session, photo) is None:
                    already_stored.append(photo.sha256)
                else:
                    stored.append(photo.sha256)
                    stored_paths.append(photo.path)
            rejected_by_path = {file.path: file for file in rejected}
            for path in sorted(set(stored_paths) | set(rejected_by_path)):
                file = rejected_by_path.get(path)
                if file is None:  # a file rejected earlier and now readable is no longer rejected
                    session.execute(delete(RejectedFileRow).where(RejectedFileRow.path == path))
                else:
                    _upsert_rejected(session, file.path, file.code, file.reason, file.sha256)
        return {"stored": stored, "already_stored": already_stored, "rejected": len(rejected_by_path)}

    def stored_sha256s(self, sha256s: Sequence[str]) -> set[str]:
        """Which of these photo hashes the store already holds (one query per 500 hashes)."""
        wanted = sorted(set(sha256s))
        found: set[str] = set()
        with self.session() as session:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                found.update(session.scalars(select(ImageRow.sha256).where(ImageRow.sha256.in_(chunk))))
        return found

    def add_rejected(self, path: str, code: str, reason: str, sha256: str | None) -> None:
        """Record (or update) a file that could not be used."""
        with self.session() as session:
            _upsert_rejected(session, path, code, reason, sha256)

    def face_rotations(self) -> dict[int, int]:
        """face id -> degrees its photo was turned (counter-clockwise) to find it; faces found upright are absent."""
        with self.session() as session:
            return {int(face): int(degrees) for face, degrees in
                    session.execute(select(FaceRotationRow.face_id, FaceRotationRow.degrees))}

    # -- forgotten faces (privacy) ---------------------------------------------------------

    def forgotten(self, *, pending: bool = True) -> list[dict]:
        """Faces deleted with their identity: ``id``, ``sha256``, ``face_index`` (only those not purged yet)."""
        query = select(ForgottenFaceRow).order_by(ForgottenFaceRow.id)
        if pending:
            query = query.where(ForgottenFaceRow.purged_at.is_(None))
        with self.session() as session:
            return [{"id": row.id, "sha256": row.sha256, "face_index": row.face_index,
                     "at": as_utc(row.at).isoformat(timespec="seconds"),
                     "purged_at": as_utc(row.purged_at).isoformat(timespec="seconds") if row.purged_at else None}
                    for row in session.scalars(query)]

    def mark_purged(self, ids: Sequence[int], at: datetime | None = None) -> None:
        """Record that every copy of these forgotten faces was removed."""
        wanted = [int(value) for value in ids]
        with self.session() as session:
            for start in range(0, len(wanted), 500):
                session.execute(update(ForgottenFaceRow).where(ForgottenFaceRow.id.in_(wanted[start : start + 500]))
                                .values(purged_at=at or _now()))

    # -- model versions -------------------------------------------------------------

    def model(self, role: str = "active") -> StoreModel | None:
        """The model whose embeddings the store holds (``active``), or a re-embed's ``target``."""
        with self.session() as session:
            row = session.get(StoreModelRow, role)
            if row is None:
                return None
            return StoreModel(row.version, row.registry_version, row.source, dict(row.thresholds), as_utc(row.since))

    def embedded_versions(self) -> dict[str, int]:
        """Model version -> number of stored embeddings made by it."""
        with self.session() as session:
            rows = session.execute(
                select(FaceRow.model_version, func.count()).where(FaceRow.embedding.is_not(None)).group_by(FaceRow.model_version)
            ).all()
        return {str(version): int(count) for version, count in rows}

    def set_model(self, model: StoreModel, role: str = "active") -> None:
        """Record the active model (or a re-embed's target), replacing the previous one."""
        with self.session() as session:
            row = session.get(StoreModelRow, role)
            if row is None:
                row = StoreModelRow(role=role)
                session.add(row)
            row.version, row.registry_version, row.source = model.version, model.registry_version, model.source
            row.thresholds, row.since = dict(model.thresholds), model.since or _now()

    def adopt_model(self, model: StoreModel) -> StoreModel:
        """Make ``model`` the active one unless the store already has one; returns the active model.

        Safe when several ingest tasks adopt at once (the first insert wins, the others read it).
        """
        from sqlalchemy.exc import IntegrityError

        try:
            with self.session() as session:
                if session.get(StoreModelRow, "active") is None:
                    session.add(StoreModelRow(role="active", version=model.version, registry_version=model.registry_version,
                                              source=model.source, thresholds=dict(model.thresholds),
                                              since=model.since or _now()))
        except IntegrityError:
            pass  # another process adopted first
        return self.model("active")

    def begin_reembed(self, target: StoreModel) -> None:
        """Mark ``target`` as the model a re-embed moves to; staged vectors of any other model are dropped."""
        with self.session() as session:
            session.execute(delete(StagedEmbeddingRow).where(StagedEmbeddingRow.model_version != target.version))
        current = self.model("target")
        if current is None or current.version != target.version:
            self.set_model(target, "target")

    def _todo(self, version: str):
        staged = exists().where(StagedEmbeddingRow.face_id == FaceRow.id, StagedEmbeddingRow.model_version == version)
        return FaceRow.embedding.is_not(None), FaceRow.model_version != version, ~staged

    def reembed_todo(self, version: str, limit: int) -> list[tuple[int, str | None]]:
        """(face id, crop path) of embedded faces not yet re-embedded for ``version``, oldest first."""
        with self.session() as session:
            rows = session.execute(select(FaceRow.id, FaceRow.crop_path).where(*self._todo(version))
                                   .order_by(FaceRow.id).limit(int(limit))).all()
        return [(int(row.id), row.crop_path) for row in rows]

    def reembed_remaining(self, version: str) -> int:
        """How many embedded faces still wait to be re-embedded for ``version``."""
        with self.session() as session:
            return int(session.scalar(select(func.count()).select_from(FaceRow).where(*self._todo(version))))

    def stage_embeddings(self, face_ids: Sequence[int], version: str, vectors: np.ndarray) -> None:
        """Keep one batch of re-embedded vectors for ``version`` (one transaction; re-staging replaces)."""
        ids = [int(face) for face in face_ids]
        with self.session() as session:
            session.execute(delete(StagedEmbeddingRow).where(StagedEmbeddingRow.face_id.in_(ids)))
            session.add_all(StagedEmbeddingRow(face_id=face, model_version=version,
                                               embedding=np.asarray(vector, EMBEDDING_DTYPE).tobytes())
                            for face, vector in zip(ids, vectors))

    # -- clustering ---------------------------------------------------------------

    def usable_faces(self) -> FaceMatrix:
        """Faces that passed the quality gates and have an embedding."""
        with self.session() as session:
            return usable_in(session)

    def replace_clustering(
        self, face_ids: np.ndarray, labels: np.ndarray, embeddings: np.ndarray, medoid_rows: dict[int, int], min_size: int,
        *, at: datetime | None = None, actor: str = "pipeline",
    ) -> dict[int, int]:
        """Store a new clustering of (all) usable faces, keeping identity ids stable.

        One transaction; see :func:`replace_clustering_in` for the rules.

        Returns:
            cluster label -> identity id, for the clusters that became identities.
        """
        with self.session() as session:
            lock_lifecycle(session)
            return replace_clustering_in(
                session, face_ids, labels, embeddings, medoid_rows, min_size, at=at or _now(), actor=actor
            )

    # -- reading ------------------------------------------------------------------

    def identities(self) -> list[dict]:
        """Every identity with its medoid and members' crops, largest first."""
        with self.session() as session:
            identities = session.scalars(select(IdentityRow).order_by(IdentityRow.size.desc(), IdentityRow.id)).all()
            members = session.execute(
                select(AssignmentRow.identity_id, FaceRow.id, FaceRow.crop_path, FaceRow.label, AssignmentRow.similarity, ImageRow.path)
                .join(FaceRow, FaceRow.id == AssignmentRow.face_id)
                .join(ImageRow, ImageRow.id == FaceRow.image_id)
                .order_by(AssignmentRow.similarity.desc())
            ).all()
        by_identity: dict[int, list] = {}
        for row in members:
            by_identity.setdefault(row.identity_id, []).append(
                {"face_id": row.id, "crop": row.crop_path, "label": row.label, "similarity": round(row.similarity, 4), "photo": row.path}
            )
        return [
            {"id": identity.id, "name": identity.name, "size": identity.size, "medoid_face_id": identity.medoid_face_id,
             "faces": by_identity.get(identity.id, [])}
            for identity in identities
        ]

    def identity_list(self) -> list[dict]:
        """Every identity without its members (cheap): id, name, size, medoid, updated; largest first."""
        with self.session() as session:
            rows = session.execute(
                select(IdentityRow.id, IdentityRow.name, IdentityRow.size, IdentityRow.medoid_face_id, IdentityRow.updated_at)
                .order_by(IdentityRow.size.desc(), IdentityRow.id)
            ).all()
        return [
            {"id": row.id, "name": row.name, "size": row.size, "medoid_face_id": row.medoid_face_id,
             "updated_at": as_utc(row.updated_at).isoformat(timespec="seconds") if row.updated_at else None}
            for row in rows
        ]

    def events(self, identity_id: int | None = None) -> list[dict]:
        """The audit trail, oldest first; only one identity's when ``identity_id`` is given."""
        query = select(IdentityEventRow).order_by(IdentityEventRow.id)
        if identity_id is not None:
            query = query.where(IdentityEventRow.identity_id == int(identity_id))
        with self.session() as session:
            rows = session.scalars(query).all()
        return [
            {"id": row.id, "identity_id": row.identity_id, "action": row.action, "details": row.details,
             "at": as_utc(row.at).isoformat(timespec="seconds"), "actor": row.actor}
            for row in rows
        ]

    def has_unseen_faces(self) -> bool:
        """Whether some usable face was never assigned nor pooled (new, or left by a killed run)."""
        assigned = exists().where(AssignmentRow.face_id == FaceRow.id)
        pooled = exists().where(PoolFaceRow.face_id == FaceRow.id)
        with self.session() as session:
            return session.scalar(select(_usable().where(~assigned, ~pooled).exists())) or False

    def identity_of_faces(self) -> dict[int, int]:
        """face id -> identity id, for every assigned face."""
        with self.session() as session:
            return dict(session.execute(select(AssignmentRow.face_id, AssignmentRow.identity_id)).all())

    def pool_face_ids(self) -> list[int]:
        """Face ids in the unknown pool."""
        with self.session() as session:
            return list(session.scalars(select(PoolFaceRow.face_id).order_by(PoolFaceRow.face_id)))

    def lifecycle_runs(self) -> list[dict]:
        """Every assignment batch and re-clustering, oldest first."""
        with self.session() as session:
            rows = session.scalars(select(LifecycleRunRow).order_by(LifecycleRunRow.id)).all()
        return [{"id": row.id, "kind": row.kind, "at": as_utc(row.at).isoformat(), "details": row.details} for row in rows]


    # -- corrections as constraints --------------------------------------------------------------

    def links(self) -> Links:
        """Every face link (the user's must-link and cannot-link corrections)."""
        with self.session() as session:
            return links_in(session)

    def constraints(self) -> dict:
        """The user's corrections as labels for retraining.

        Returns:
            ``must_link`` and ``cannot_link``: lists of ``[face_a, face_b]``;
            ``groups``: face id -> group id, one group per set of faces joined by
            must-links (the faces a user confirmed as one person); ``model_version``:
            the store's active model (whose embeddings these faces have).
        """
        from components.identities.groups import DisjointSets

        links = self.links()
        sets = DisjointSets()
        for a, b in links.must:
            sets.union(a, b)
        faces = sorted(sets.parent)
        roots = sorted({sets.find(face) for face in faces})
        group_of = {face_root: number for number, face_root in enumerate(roots)}
        active = self.model("active")
        embedded = self.embedded_versions()  # a store that never recorded its model: the one its vectors name
        version = active.version if active else (next(iter(embedded)) if len(embedded) == 1 else None)
        return {"must_link": [list(pair) for pair in links.must], "cannot_link": [list(pair) for pair in links.cannot],
                "groups": {face: group_of[sets.find(face)] for face in faces}, "model_version": version}

    def counts(self) -> dict[str, int]:
        """Row counts, for reports and for tests of idempotency."""
        with self.session() as session:
            return {
                "images": session.scalar(select(func.count()).select_from(ImageRow)),
                "faces": session.scalar(select(func.count()).select_from(FaceRow)),
                "usable_faces": session.scalar(select(func.count()).select_from(FaceRow).where(FaceRow.passed.is_(True))),
                "identities": session.scalar(select(func.count()).select_from(IdentityRow)),
                "assignments": session.scalar(select(func.count()).select_from(AssignmentRow)),
                "rejected_files": session.scalar(select(func.count()).select_from(RejectedFileRow)),
            }
