"""The identity store: photos, faces, identities and assignments in SQL.

SQLite by default (one file beside the run's outputs); any SQLAlchemy URL works,
so production points it at Postgres. Photos are keyed by the sha256 of their bytes,
which makes every ingest idempotent: the same photo, under any path, is stored once.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import (
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
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

EMBEDDING_DTYPE = np.float32


def _now() -> datetime:
    return datetime.now(UTC)


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


@dataclass
class FaceMatrix:
    """Usable faces as arrays, in face-id order."""

    face_ids: np.ndarray
    embeddings: np.ndarray
    labels: list[str | None]


class IdentityStore:
    """SQLAlchemy-backed store; create one per process and reuse it.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///runs/demo/faces.db`` or
            ``postgresql+psycopg2://user@host/db``.
    """

    def __init__(self, url: str):
        self.url = url
        self.engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            # SQLite ignores ON DELETE CASCADE unless asked, per connection.
            event.listen(self.engine, "connect", lambda connection, _: connection.execute("PRAGMA foreign_keys=ON"))
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

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
        """
        with self.session() as session:
            existing = session.scalar(select(ImageRow.id).where(ImageRow.sha256 == sha256))
            if existing is not None:
                return existing
            image = ImageRow(
                sha256=sha256, path=path, width=size[0], height=size[1], label=label, detector_version=detector_version
            )
            for face in faces:
                image.faces.append(
                    FaceRow(
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
                )
            session.add(image)
            session.flush()
            # A file rejected earlier and now readable (replaced in place) is no longer rejected.
            session.execute(delete(RejectedFileRow).where(RejectedFileRow.path == path))
            return image.id

    def add_rejected(self, path: str, code: str, reason: str, sha256: str | None) -> None:
        """Record (or update) a file that could not be used."""
        with self.session() as session:
            row = session.scalar(select(RejectedFileRow).where(RejectedFileRow.path == path))
            if row is None:
                session.add(RejectedFileRow(path=path, code=code, reason=reason, sha256=sha256))
            else:
                row.code, row.reason, row.sha256 = code, reason, sha256

    # -- clustering ---------------------------------------------------------------

    def usable_faces(self) -> FaceMatrix:
        """Faces that passed the quality gates and have an embedding."""
        with self.session() as session:
            rows = session.execute(
                select(FaceRow.id, FaceRow.embedding, FaceRow.label)
                .where(FaceRow.passed.is_(True), FaceRow.embedding.is_not(None))
                .order_by(FaceRow.id)
            ).all()
        if not rows:
            return FaceMatrix(np.empty(0, np.int64), np.empty((0, 0), EMBEDDING_DTYPE), [])
        embeddings = np.stack([np.frombuffer(row.embedding, EMBEDDING_DTYPE) for row in rows])
        return FaceMatrix(np.array([row.id for row in rows]), embeddings, [row.label for row in rows])

    def replace_clustering(
        self, face_ids: np.ndarray, labels: np.ndarray, embeddings: np.ndarray, medoid_rows: dict[int, int], min_size: int
    ) -> dict[int, int]:
        """Store a new clustering of (all) usable faces, keeping identity ids stable.

        Each new cluster of at least ``min_size`` faces takes over the existing
        identity it shares the most faces with (greedily, largest overlap first);
        clusters matching no identity create new ones; identities left unmatched
        are removed. Smaller clusters stay in the unknown pool (no identity).

        Args:
            face_ids: (N,) face ids, rows of ``embeddings``.
            labels: (N,) cluster labels.
            embeddings: (N, D) unit vectors.
            medoid_rows: cluster label -> row index of its medoid.
            min_size: smallest cluster that becomes an identity.

        Returns:
            cluster label -> identity id, for the clusters that became identities.
        """
        face_ids = np.asarray(face_ids)
        labels = np.asarray(labels)
        sizes = Counter(labels.tolist())
        kept = [label for label, size in sizes.items() if size >= min_size]
        with self.session() as session:
            previous = dict(session.execute(select(AssignmentRow.face_id, AssignmentRow.identity_id)).all())
            overlaps = Counter(
                (int(label), previous[int(face)])
                for face, label in zip(face_ids, labels)
                if int(face) in previous and sizes[label] >= min_size
            )
            identity_of: dict[int, int] = {}
            taken: set[int] = set()
            for (label, identity), _ in sorted(overlaps.items(), key=lambda item: (-item[1], item[0])):
                if label not in identity_of and identity not in taken:
                    identity_of[label] = identity
                    taken.add(identity)
            session.execute(delete(AssignmentRow))
            stale = set(session.scalars(select(IdentityRow.id))) - taken
            if stale:
                session.execute(delete(IdentityRow).where(IdentityRow.id.in_(stale)))
            for label in sorted(kept):
                medoid_row = medoid_rows[label]
                if label in identity_of:
                    identity = session.get(IdentityRow, identity_of[label])
                    identity.medoid_face_id = int(face_ids[medoid_row])
                    identity.size = sizes[label]
                else:
                    identity = IdentityRow(medoid_face_id=int(face_ids[medoid_row]), size=sizes[label])
                    session.add(identity)
                    session.flush()
                    identity_of[label] = identity.id
                members = np.flatnonzero(labels == label)
                similarities = embeddings[members] @ embeddings[medoid_row]
                session.add_all(
                    AssignmentRow(
                        face_id=int(face_ids[row]), identity_id=identity.id, similarity=float(sim), method="cluster"
                    )
                    for row, sim in zip(members, similarities)
                )
        return identity_of

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

    def counts(self) -> dict[str, int]:
        """Row counts, for reports and for tests of idempotency."""
        from sqlalchemy import func

        with self.session() as session:
            return {
                "images": session.scalar(select(func.count()).select_from(ImageRow)),
                "faces": session.scalar(select(func.count()).select_from(FaceRow)),
                "usable_faces": session.scalar(select(func.count()).select_from(FaceRow).where(FaceRow.passed.is_(True))),
                "identities": session.scalar(select(func.count()).select_from(IdentityRow)),
                "assignments": session.scalar(select(func.count()).select_from(AssignmentRow)),
                "rejected_files": session.scalar(select(func.count()).select_from(RejectedFileRow)),
            }
