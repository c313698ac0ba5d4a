"""What the people page reads from the identity store: one screen at a time.

Every list is paginated in SQL (LIMIT / OFFSET), so a store of thousands of people
costs one small query per screen. The unknown-faces page clusters the pool on demand
and keeps the result until the pool, the identities or the links change.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select

from components.identities import store as db
from components.identities.lifecycle import Policy, apply_links, as_embeddings, cluster_faces, link_targets

SORTS = {"size": "most faces", "name": "name", "recent": "most recent"}


@dataclass
class Page:
    """One screen of a list: its items, the total and where it is."""

    items: list
    total: int
    number: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.pages


def page_number(value, default: int = 1) -> int:
    """A page number from a query string: a whole number >= 1, else the default."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return max(1, min(number, 10**6))


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def people(store, *, sort: str = "size", search: str = "", page: int = 1, per_page: int = 60,
           hidden: bool = False) -> Page:
    """People shown on the people page: visible ones (or only hidden ones), searched by name, sorted."""
    sort = sort if sort in SORTS else "size"
    is_hidden = select(db.HiddenIdentityRow.identity_id).where(db.HiddenIdentityRow.identity_id == db.IdentityRow.id).exists()
    conditions = [is_hidden if hidden else ~is_hidden]
    search = (search or "").strip()
    if search:
        conditions.append(db.IdentityRow.name.ilike(_like(search), escape="\\"))
    order = {"size": (db.IdentityRow.size.desc(), db.IdentityRow.id),
             "name": (db.IdentityRow.name.is_(None), func.lower(db.IdentityRow.name), db.IdentityRow.id),
             "recent": (db.IdentityRow.updated_at.desc(), db.IdentityRow.id.desc())}[sort]
    with store.session() as session:
        total = session.scalar(select(func.count()).select_from(db.IdentityRow).where(*conditions))
        rows = session.execute(
            select(db.IdentityRow.id, db.IdentityRow.name, db.IdentityRow.size, db.IdentityRow.medoid_face_id,
                   db.IdentityRow.updated_at).where(*conditions).order_by(*order)
            .limit(per_page).offset((page - 1) * per_page)).all()
    items = [{"id": row.id, "name": row.name, "size": row.size, "medoid_face_id": row.medoid_face_id,
              "updated_at": db.as_utc(row.updated_at)} for row in rows]
    return Page(items, int(total or 0), page, per_page)


def person(store, identity_id: int, *, page: int = 1, per_page: int = 60) -> dict | None:
    """One person and one screen of its faces, least similar to the medoid first (likely mistakes first)."""
    with store.session() as session:
        row = session.get(db.IdentityRow, int(identity_id))
        if row is None:
            return None
        hidden = session.get(db.HiddenIdentityRow, row.id) is not None
        total = session.scalar(select(func.count()).select_from(db.AssignmentRow)
                               .where(db.AssignmentRow.identity_id == row.id))
        faces = session.execute(
            select(db.FaceRow.id, db.AssignmentRow.similarity, db.AssignmentRow.method, db.ImageRow.path)
            .join(db.AssignmentRow, db.AssignmentRow.face_id == db.FaceRow.id)
            .join(db.ImageRow, db.ImageRow.id == db.FaceRow.image_id)
            .where(db.AssignmentRow.identity_id == row.id)
            .order_by(db.AssignmentRow.similarity, db.FaceRow.id)
            .limit(per_page).offset((page - 1) * per_page)).all()
        return {"id": row.id, "name": row.name, "size": row.size, "medoid_face_id": row.medoid_face_id,
                "updated_at": db.as_utc(row.updated_at), "hidden": hidden,
                "faces": Page([{"id": face.id, "similarity": float(face.similarity), "method": face.method,
                                "photo": face.path.rsplit("/", 1)[-1]} for face in faces], int(total or 0), page, per_page)}


def face(store, face_id: int) -> dict | None:
    """One face: its box, its photo's stored location, and where it belongs."""
    with store.session() as session:
        row = session.execute(
            select(db.FaceRow, db.ImageRow.path, db.ImageRow.width, db.ImageRow.height)
            .join(db.ImageRow, db.ImageRow.id == db.FaceRow.image_id).where(db.FaceRow.id == int(face_id))).first()
        if row is None:
            return None
        found = row[0]
        owner = db.owners_in(session, [found.id]).get(found.id)
        pooled = session.get(db.PoolFaceRow, found.id) is not None
        name = session.get(db.IdentityRow, owner).name if owner is not None else None
        return {"id": found.id, "crop_path": found.crop_path, "photo_path": row.path, "photo_name": row.path.rsplit("/", 1)[-1],
                "box": (found.box_x, found.box_y, found.box_w, found.box_h), "width": row.width, "height": row.height,
                "identity_id": owner, "identity_name": name, "pooled": pooled, "passed": found.passed,
                "failures": found.failures}


def crop_location(store, face_id: int) -> str | None:
    with store.session() as session:
        return session.scalar(select(db.FaceRow.crop_path).where(db.FaceRow.id == int(face_id)))


def people_names(store, ids) -> dict[int, str | None]:
    ids = sorted({int(i) for i in ids})
    if not ids:
        return {}
    with store.session() as session:
        return dict(session.execute(select(db.IdentityRow.id, db.IdentityRow.name).where(db.IdentityRow.id.in_(ids))).all())


# -- the unknown pool ---------------------------------------------------------------------------


class UnknownClusters:
    """Clusters of the unknown pool with the nearest people suggested, recomputed when the store changes."""

    def __init__(self, policy: Policy, suggestions: int = 3):
        self.policy = policy
        self.suggestions = suggestions
        self._lock = threading.Lock()
        self._key = None
        self._clusters: list[dict] = []

    @staticmethod
    def _version(session) -> tuple:
        """Changes whenever the pool, the identities or the links change."""
        return (session.scalar(select(func.count()).select_from(db.PoolFaceRow)),
                session.scalar(select(func.max(db.PoolFaceRow.face_id))),
                session.scalar(select(func.count()).select_from(db.IdentityRow)),
                session.scalar(select(func.max(db.IdentityRow.updated_at))),
                session.scalar(select(func.count()).select_from(db.FaceLinkRow)),
                session.scalar(select(func.max(db.FaceLinkRow.id))),
                session.scalar(select(func.max(db.CorrectionRow.id))),
                session.scalar(select(func.max(db.LifecycleRunRow.id))))

    def clusters(self, store) -> list[dict]:
        with self._lock:
            with store.session() as session:
                key = self._version(session)
                if key == self._key:
                    return self._clusters
                self._clusters = self._compute(session)
                self._key = key
            return self._clusters

    def _compute(self, session) -> list[dict]:
        pool, _ = db.pool_matrix(session)
        if not len(pool.face_ids):
            return []
        x = as_embeddings(pool.embeddings)
        labels = cluster_faces(x, pool.photo_ids, self.policy)
        links = db.links_in(session, pool.face_ids.tolist())
        if links:
            labels = apply_links(labels, pool.face_ids, links.must, links.cannot, x)
        partners = {face for pair in [*links.must, *links.cannot] for face in pair}
        forbidden, _ = link_targets(pool.face_ids, links, db.owners_in(session, partners)) if links else ({}, {})
        ids, medoids = db.identity_medoids(session)
        people = {row.id: row for row in session.execute(select(db.IdentityRow.id, db.IdentityRow.name,
                                                                 db.IdentityRow.medoid_face_id))}
        hidden = db.hidden_identity_ids(session)
        clusters = []
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            centre = x[rows].sum(axis=0)
            centre /= np.linalg.norm(centre) or 1.0
            blocked = set().union(*(forbidden.get(int(row), set()) for row in rows)) | hidden
            suggestions = []
            if len(ids):
                sims = as_embeddings(medoids) @ centre
                for column in np.argsort(-sims):
                    identity = int(ids[column])
                    if identity in blocked:
                        continue
                    suggestions.append({"id": identity, "name": people[identity].name, "similarity": float(sims[column]),
                                        "medoid_face_id": people[identity].medoid_face_id})
                    if len(suggestions) == self.suggestions:
                        break
            faces = pool.face_ids[rows][np.argsort(-(x[rows] @ centre), kind="stable")]
            clusters.append({"faces": [int(face) for face in faces], "size": len(rows), "suggestions": suggestions,
                             "key": int(faces[0])})
        clusters.sort(key=lambda cluster: (-cluster["size"], cluster["key"]))
        return clusters

    def page(self, store, number: int, per_page: int) -> Page:
        clusters = self.clusters(store)
        return Page(clusters[(number - 1) * per_page : number * per_page], len(clusters), number, per_page)
