"""What a user does to identities: rename, merge, split, delete; each one audited.

Every operation is one transaction: it checks its request, changes the store,
recomputes the medoids it affects, and appends an event to ``identity_events``
(who, what, when) — all committed together or not at all. A request that cannot
be carried out raises :class:`IdentityError` (a ``ValueError``) with a message
meant for the user, and changes nothing.

Deleting an identity (privacy): the identity row, its assignments, and its
faces' rows are deleted — so the embeddings, boxes and landmarks are gone, not
just nulled — and the faces' crops are removed where they are stored (a local
folder or S3, see :mod:`components.identities.crops`). Each deleted face is also
recorded (photo sha256 and face index only) in ``forgotten_faces``: copies outside the
store, the workflow's batch artefacts and quarantine copies, are removed by
``faces purge`` (:mod:`components.workflow.purge`), which ``faces identities delete``
runs right after the delete. The photos
themselves stay (they are the user's files, not derived from the identity), and
so does their sha256: the next ``faces run`` over the same folder therefore
skips those photos and does not bring the person back. Earlier events of the
identity (and of identities merged into it) have their names redacted; the
``deleted`` event keeps only ids and counts.

Merge and split are kept as face links (``face_links``, see
:mod:`components.identities.store`): a merge must-links the moved faces with the kept
identity's medoid, a split must-links the faces split out together and cannot-links them
with every face left behind. The life cycle honours the links, so these decisions hold
against the pool's re-clustering and against a full re-clustering too (names survive
both).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from sqlalchemy import delete, select, update

from components.identities import store as db
from components.identities.crops import CropLocationError, delete_crops
from components.identities.lifecycle import Clock, Policy, policy_for_store, refresh_identities, utc_now
from components.settings import load_settings
from components.storage import StorageError

NAME_MAX = 512
REDACTED = "[deleted]"
# Keys of event details that may hold a person's name (see :func:`redact_names`).
NAME_KEYS = ("name", "from", "to")


class IdentityError(ValueError):
    """A request that cannot be carried out; the message says why, for the user."""


class UnknownIdentityError(IdentityError, LookupError):
    """No identity has that id."""


def _default_policy(store: db.IdentityStore) -> Policy:
    """params.yaml's life-cycle numbers with the store's active model's thresholds.

    Merge and split use the policy only to sample large identities' medoids; it is built
    the way the life cycle builds it, so a caller need not pass one.
    """
    return policy_for_store(store, load_settings())


# -- pure checks ------------------------------------------------------------------------------


def clean_name(name: str | None) -> str:
    """The name to store: surrounding blanks stripped.

    Raises:
        IdentityError: empty, too long, or with control characters.
    """
    if name is None or not str(name).strip():
        raise IdentityError("a name must not be empty")
    name = str(name).strip()
    if len(name) > NAME_MAX:
        raise IdentityError(f"a name has at most {NAME_MAX} characters; this one has {len(name)}")
    if any(ord(char) < 32 for char in name):
        raise IdentityError("a name must not contain control characters (newlines, tabs, ...)")
    return name


def check_merge(into: int, others: Iterable[int], existing: set[int]) -> list[int]:
    """The identities to merge into ``into``, without repeats, in the order given.

    Raises:
        IdentityError: nothing to merge, or ``into`` among the others.
        UnknownIdentityError: an id that does not exist.
    """
    others = list(dict.fromkeys(int(other) for other in others))
    if not others:
        raise IdentityError("name at least one identity to merge into the first")
    if into in others:
        raise IdentityError(f"cannot merge identity {into} into itself")
    unknown = [identity for identity in [into, *others] if identity not in existing]
    if unknown:
        raise UnknownIdentityError(f"no identity with id {', '.join(map(str, unknown))}")
    return others


def merge_conflicts(photos_of: dict[int, dict[int, int]]) -> dict[int, list[int]]:
    """Photos that two of the identities to merge both hold a face of (cannot-link).

    Args:
        photos_of: identity -> {photo id: face id} of its members.

    Returns:
        photo id -> the faces of that photo across the identities, for photos held by two or more.
    """
    faces_of_photo: dict[int, list[int]] = {}
    for faces in photos_of.values():
        for photo, face in faces.items():
            faces_of_photo.setdefault(photo, []).append(face)
    return {photo: sorted(faces) for photo, faces in sorted(faces_of_photo.items()) if len(faces) > 1}


def check_split(identity: int, face_ids: Iterable[int], members: set[int]) -> list[int]:
    """The faces to move out, without repeats, sorted.

    Raises:
        IdentityError: no faces, faces that are not members, or all of them.
    """
    faces = sorted({int(face) for face in face_ids})
    if not faces:
        raise IdentityError("name at least one face to split out")
    strangers = [face for face in faces if face not in members]
    if strangers:
        raise IdentityError(f"face(s) {', '.join(map(str, strangers))} are not in identity {identity}")
    if len(faces) == len(members):
        raise IdentityError(f"that is every face of identity {identity}; nothing would be left (rename it instead)")
    return faces


def redact_names(details: dict) -> dict:
    """Event details with every name replaced by :data:`REDACTED` (ids and counts kept)."""
    return {key: (REDACTED if key in NAME_KEYS and isinstance(value, str) else value) for key, value in details.items()}


# -- operations (one transaction each) -----------------------------------------------------------


def _identity(session, identity_id: int) -> db.IdentityRow:
    row = session.get(db.IdentityRow, int(identity_id))
    if row is None:
        raise UnknownIdentityError(f"no identity with id {identity_id}")
    return row


def _members(session, identity_id: int) -> dict[int, int]:
    """face id -> photo id of an identity's members."""
    rows = session.execute(
        select(db.FaceRow.id, db.FaceRow.image_id).join(db.AssignmentRow, db.AssignmentRow.face_id == db.FaceRow.id)
        .where(db.AssignmentRow.identity_id == int(identity_id))
    ).all()
    return {int(face): int(photo) for face, photo in rows}


def rename(store: db.IdentityStore, identity_id: int, name: str, *, actor: str = "user", clock: Clock = utc_now) -> dict:
    """Give an identity a name (or a new one).

    Returns:
        ``{"id", "name", "previous_name"}``.

    Raises:
        UnknownIdentityError: no such identity.
        IdentityError: an empty or malformed name.
    """
    name = clean_name(name)
    now = clock()
    with store.session() as session:
        db.lock_lifecycle(session)  # not interleaved with a batch's assign or a re-clustering
        row = _identity(session, identity_id)
        previous = row.name
        row.name = name
        row.updated_at = now
        db.add_event(session, row.id, "renamed", {"from": previous, "to": name}, now, actor)
        return {"id": row.id, "name": name, "previous_name": previous}


def merge(store: db.IdentityStore, into: int, others: Iterable[int], *, actor: str = "user", clock: Clock = utc_now,
          policy: Policy | None = None) -> dict:
    """Merge identities into the first one; its medoid is recomputed.

    ``into`` keeps its id and name; if it has no name it takes the first name
    among the others. The other identities are removed.

    Returns:
        ``{"id", "name", "merged", "faces_moved", "size", "medoid_face_id"}``.

    Raises:
        UnknownIdentityError: an id that does not exist.
        IdentityError: merging into itself, nothing to merge, or identities that hold
            faces of one photo (two faces of one photo are never one person).
    """
    into = int(into)
    others = [int(other) for other in others]
    policy = policy or _default_policy(store)
    now = clock()
    with store.session() as session:
        db.lock_lifecycle(session)  # not interleaved with a batch's assign or a re-clustering
        ids = [into, *others]
        existing = set(session.scalars(select(db.IdentityRow.id).where(db.IdentityRow.id.in_([int(i) for i in ids]))))
        others = check_merge(into, others, existing)
        members = {identity: _members(session, identity) for identity in [into, *others]}
        conflicts = merge_conflicts(
            {identity: {photo: face for face, photo in faces.items()} for identity, faces in members.items()}
        )
        if conflicts:
            shown = list(conflicts.items())[:5]
            listed = "; ".join(f"photo {photo}: faces {', '.join(map(str, faces))}" for photo, faces in shown)
            raise IdentityError(
                f"these identities hold faces of the same photo, and a photo shows a person once ({listed}); "
                "split those faces out first"
            )
        target = _identity(session, into)
        rows = {identity: _identity(session, identity) for identity in others}
        if target.name is None:
            target.name = next((rows[identity].name for identity in others if rows[identity].name), None)
        moved = [face for identity in others for face in members[identity]]
        # Kept as constraints: the merged faces are one person from now on.
        everyone = [face for faces in members.values() for face in faces]
        stale = [link for link in db.links_in(session, everyone).cannot if set(link) <= set(everyone)]
        for a, b in stale:
            session.execute(delete(db.FaceLinkRow).where(db.FaceLinkRow.face_a == a, db.FaceLinkRow.face_b == b))
        db.set_links_in(session, "must", [(face, target.medoid_face_id) for face in moved], now, actor)
        session.execute(
            update(db.AssignmentRow).where(db.AssignmentRow.identity_id.in_(others)).values(identity_id=into, method="manual")
        )
        session.execute(delete(db.IdentityRow).where(db.IdentityRow.id.in_(others)))
        for identity in others:
            db.add_event(session, identity, "merged_into", {"into": into, "faces": len(members[identity])}, now, actor)
        db.add_event(session, into, "merged", {"from": others, "faces_moved": len(moved)}, now, actor)
        session.flush()
        refresh_identities(session, [into], policy, at=now, actor=actor)
        return {"id": into, "name": target.name, "merged": others, "faces_moved": len(moved), "size": target.size,
                "medoid_face_id": target.medoid_face_id}


def split(store: db.IdentityStore, identity_id: int, face_ids: Iterable[int], *, actor: str = "user", clock: Clock = utc_now,
          policy: Policy | None = None) -> dict:
    """Move faces out of an identity into a new one; both medoids are recomputed.

    Returns:
        ``{"id", "new_id", "faces_moved", "size", "new_size"}``.

    Raises:
        UnknownIdentityError: no such identity.
        IdentityError: no faces, faces that are not members, or all of its faces.
    """
    identity_id = int(identity_id)
    policy = policy or _default_policy(store)
    now = clock()
    with store.session() as session:
        db.lock_lifecycle(session)  # not interleaved with a batch's assign or a re-clustering
        source = _identity(session, identity_id)
        faces = check_split(identity_id, face_ids, set(_members(session, identity_id)))
        created = db.IdentityRow(medoid_face_id=faces[0], size=len(faces), updated_at=now)
        session.add(created)
        session.flush()
        session.execute(
            update(db.AssignmentRow).where(db.AssignmentRow.face_id.in_(faces)).values(identity_id=created.id, method="manual")
        )
        # Kept as constraints: the faces split out are one person, and not the one they left.
        staying = sorted(set(_members(session, identity_id)) - set(faces))
        old_links = [link for link in db.links_in(session, faces).must if set(link) & set(staying)]
        for a, b in old_links:
            session.execute(delete(db.FaceLinkRow).where(db.FaceLinkRow.face_a == a, db.FaceLinkRow.face_b == b))
        db.set_links_in(session, "must", [(face, faces[0]) for face in faces[1:]], now, actor)
        db.set_links_in(session, "cannot", [(face, other) for face in faces for other in staying], now, actor)
        db.add_event(session, identity_id, "split", {"faces": faces, "to": created.id}, now, actor)
        db.add_event(session, created.id, "created", {"by": "split", "split_from": identity_id, "faces": faces}, now, actor)
        session.flush()
        refresh_identities(session, [identity_id, created.id], policy, at=now, actor=actor)
        return {"id": identity_id, "new_id": created.id, "faces_moved": len(faces), "size": source.size, "new_size": created.size}


def _merged_into(session, identity_id: int) -> set[int]:
    """The identity and every identity merged into it (or whose faces moved to it), transitively."""
    found = {int(identity_id)}
    frontier = [int(identity_id)]
    events = session.execute(
        select(db.IdentityEventRow.identity_id, db.IdentityEventRow.details)
        .where(db.IdentityEventRow.action.in_(("merged_into", "removed")))
    ).all()
    while frontier:
        current = frontier.pop()
        for source, details in events:
            target = (details or {}).get("into", (details or {}).get("faces_to"))
            if target == current and source not in found:
                found.add(source)
                frontier.append(source)
    return found


def delete_identity(store: db.IdentityStore, identity_id: int, *, crops_root: str | os.PathLike[str] | None,
                    actor: str = "user", clock: Clock = utc_now) -> dict:
    """Delete an identity and everything derived from it (see the module docstring).

    The crops are removed last, inside the transaction: if one cannot be removed
    (permissions, an unreachable S3 server), nothing in the store changes and
    running the delete again finishes the job (crops already gone are fine).
    Crops stored as ``s3://`` URIs are deleted in S3; local crop files only inside
    ``crops_root`` (others are counted as refused and left alone).

    Args:
        store: the identity store.
        identity_id: the identity to delete.
        crops_root: where relative crop paths start: the run's output folder, or an
            ``s3://bucket/prefix`` (see :func:`components.identities.crops.crops_root_for`);
            None when no root is known (then relative crop paths are an error).
        actor: who asked.
        clock: time of the event.

    Returns:
        ``{"id", "faces_deleted", "crops_removed", "crops_missing", "crops_refused"}``.

    Raises:
        UnknownIdentityError: no such identity.
        IdentityError: a crop that exists but could not be removed, or relative crop
            paths without a crops root.
    """
    identity_id = int(identity_id)
    now = clock()
    with store.session() as session:
        db.lock_lifecycle(session)  # not interleaved with a batch's assign or a re-clustering
        _identity(session, identity_id)
        rows = session.execute(
            select(db.FaceRow.id, db.FaceRow.crop_path, db.FaceRow.face_index, db.ImageRow.sha256)
            .join(db.AssignmentRow, db.AssignmentRow.face_id == db.FaceRow.id)
            .join(db.ImageRow, db.ImageRow.id == db.FaceRow.image_id)
            .where(db.AssignmentRow.identity_id == identity_id).order_by(db.FaceRow.id)
        ).all()
        face_ids = [int(row.id) for row in rows]
        # Copies outside the store (batch artefacts, quarantine) are removed by `faces purge`,
        # which the CLI's delete runs at once; these rows say what it still has to remove.
        photos, known = sorted({row.sha256 for row in rows}), set()
        for start in range(0, len(photos), 500):
            known.update(session.execute(select(db.ForgottenFaceRow.sha256, db.ForgottenFaceRow.face_index)
                                         .where(db.ForgottenFaceRow.sha256.in_(photos[start : start + 500]))).all())
        session.add_all(db.ForgottenFaceRow(sha256=row.sha256, face_index=int(row.face_index), at=now)
                        for row in rows if (row.sha256, int(row.face_index)) not in known)
        session.execute(delete(db.AssignmentRow).where(db.AssignmentRow.identity_id == identity_id))
        session.execute(delete(db.IdentityRow).where(db.IdentityRow.id == identity_id))
        for start in range(0, len(face_ids), 500):
            chunk = face_ids[start : start + 500]
            session.execute(delete(db.PoolFaceRow).where(db.PoolFaceRow.face_id.in_(chunk)))
            session.execute(delete(db.FaceRow).where(db.FaceRow.id.in_(chunk)))
        # Names of the person in earlier events go too (also of identities merged into this one).
        for event in session.scalars(
            select(db.IdentityEventRow).where(db.IdentityEventRow.identity_id.in_(_merged_into(session, identity_id)))
        ):
            redacted = redact_names(event.details or {})
            if redacted != event.details:
                event.details = redacted
        try:
            crops = delete_crops([row.crop_path for row in rows], crops_root)
        except StorageError as error:
            if isinstance(error, CropLocationError) or error.code == "config":
                # Relative paths without a root, or S3 settings missing: found before deleting anything.
                raise IdentityError(f"cannot delete the crops of identity {identity_id}: {error.reason}; "
                                    "nothing was deleted") from None
            raise _removal_error(error) from None
        result = {"id": identity_id, "faces_deleted": len(face_ids), "crops_removed": len(crops.deleted),
                  "crops_missing": len(crops.missing), "crops_refused": len(crops.refused)}
        db.add_event(session, identity_id, "deleted", {"face_ids": face_ids, **{k: v for k, v in result.items() if k != "id"}},
                     now, actor)
        session.flush()
        return result


def _removal_error(error: StorageError) -> IdentityError:
    return IdentityError(f"could not remove crop {error.uri} ({error.reason}); the store was left unchanged "
                         "(crops already removed stay removed): fix the cause and run the delete again")


def show(store: db.IdentityStore, identity_id: int) -> dict:
    """One identity: its members (best first) and its history.

    Raises:
        UnknownIdentityError: no such identity.
    """
    with store.session() as session:
        row = _identity(session, identity_id)
        members = session.execute(
            select(db.FaceRow.id, db.FaceRow.crop_path, db.FaceRow.label, db.AssignmentRow.similarity, db.AssignmentRow.method,
                   db.ImageRow.id.label("photo_id"), db.ImageRow.path)
            .join(db.AssignmentRow, db.AssignmentRow.face_id == db.FaceRow.id)
            .join(db.ImageRow, db.ImageRow.id == db.FaceRow.image_id)
            .where(db.AssignmentRow.identity_id == row.id)
            .order_by(db.AssignmentRow.similarity.desc(), db.FaceRow.id)
        ).all()
        summary = {"id": row.id, "name": row.name, "size": row.size, "medoid_face_id": row.medoid_face_id,
                   "updated_at": db.as_utc(row.updated_at).isoformat(timespec="seconds") if row.updated_at else None}
    summary["faces"] = [
        {"face_id": m.id, "photo_id": m.photo_id, "photo": m.path, "crop": m.crop_path, "label": m.label,
         "similarity": round(m.similarity, 4), "method": m.method}
        for m in members
    ]
    summary["history"] = store.events(summary["id"])
    return summary
