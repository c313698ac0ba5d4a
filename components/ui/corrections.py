"""What the people page does to the identity store: each correction one transaction, undoable.

Every correction checks its request first (a :class:`CorrectionError` with a message for
the user, nothing changed), then in one transaction moves faces, records the user's
decision as face links (must-link: one person; cannot-link: never one person; see
``face_links`` in :mod:`components.identities.store`), recomputes the medoids it
touched, appends audit events to ``identity_events`` and a ``corrections`` row holding
the state before and after, so that :func:`undo` can put things back.

Links name faces, never identity ids, so the decisions survive re-clustering:

* merge A into B: each face of A is must-linked with B's medoid; cannot-links between
  their faces are dropped (the user just said they are one person);
* move faces from A to B: must-links to A's faces are dropped, each face is cannot-linked
  with every face A keeps and must-linked with B's medoid; to a new person, the faces are
  must-linked together; back to unknown (and "not this person"), only the cannot-links to A;
* accept a suggestion for pool faces: must-linked with the person's medoid; reject it:
  cannot-linked with each of its faces; "these are one new person": must-linked together.

Cannot-links go to every face of the person, not only to its medoid: a re-clustering
splits a cluster around the faces named in cannot-links, and a person's face without a
link could otherwise follow the rejected face.

Undo takes the latest correction not yet undone, and only when the faces it moved are
still where it put them (a re-clustering or a later correction may have moved them:
then it says so and changes nothing). Deleting a person is final (privacy): it is done by
:func:`components.identities.operations.delete_identity` and cannot be undone.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, func, select

from components.identities import store as db
from components.identities.lifecycle import Clock, Policy, refresh_identities, utc_now
from components.identities.operations import IdentityError, UnknownIdentityError, clean_name, merge_conflicts

__all__ = ["NEW", "UNKNOWN", "CorrectionError", "accept", "faces_of", "hide", "merge", "move", "new_person",
           "not_this_person", "recent", "reject", "rename", "undo"]

UNKNOWN = "unknown"
NEW = "new"
# A request naming more faces than this is refused (a page never shows that many).
MAX_FACES = 5000


class CorrectionError(IdentityError):
    """A correction that cannot be carried out; the message says why, for the user."""


# -- reading the state a correction touches --------------------------------------------------------


def _face_ids(face_ids: Iterable) -> list[int]:
    try:
        faces = sorted({int(face) for face in face_ids})
    except (TypeError, ValueError):
        raise CorrectionError("face ids are whole numbers") from None
    if not faces:
        raise CorrectionError("select at least one face")
    if len(faces) > MAX_FACES:
        raise CorrectionError(f"at most {MAX_FACES} faces at a time; {len(faces)} were selected")
    return faces


def _owners(session, faces: list[int]) -> dict[int, int | None]:
    """face id -> identity id, or None for a face in the unknown pool; faces in neither are left out."""
    owners: dict[int, int | None] = dict(db.owners_in(session, faces))
    for start in range(0, len(faces), 500):
        chunk = faces[start : start + 500]
        for face in session.scalars(select(db.PoolFaceRow.face_id).where(db.PoolFaceRow.face_id.in_(chunk))):
            owners.setdefault(int(face), None)
    return owners


def _identity(session, identity_id) -> db.IdentityRow:
    try:
        identity_id = int(identity_id)
    except (TypeError, ValueError):
        raise CorrectionError(f"{identity_id!r} is not a person's number") from None
    row = session.get(db.IdentityRow, identity_id)
    if row is None:
        raise UnknownIdentityError(f"there is no person #{identity_id} (deleted, or merged into another)")
    return row


def _members(session, identity_id: int) -> list[int]:
    return [int(face) for face in session.scalars(
        select(db.AssignmentRow.face_id).where(db.AssignmentRow.identity_id == int(identity_id)).order_by(db.AssignmentRow.face_id))]


def _photos(session, faces: list[int]) -> dict[int, int]:
    """face id -> photo id."""
    result: dict[int, int] = {}
    for start in range(0, len(faces), 500):
        result.update((int(face), int(photo)) for face, photo in session.execute(
            select(db.FaceRow.id, db.FaceRow.image_id).where(db.FaceRow.id.in_(faces[start : start + 500]))))
    return result


def _check_photo_conflicts(session, faces: list[int], target: int | None) -> None:
    """Refuse to put two faces of one photo into one person (a photo shows a person once)."""
    photos = _photos(session, faces)
    existing = {photo: face for face, photo in _photos(session, _members(session, target)).items()} if target else {}
    seen: dict[int, int] = {}
    for face in faces:
        photo = photos[face]
        other = existing.get(photo, seen.get(photo))
        if other is not None and other != face:
            where = f"person #{target} already holds face {other}" if photo in existing else f"face {other} is selected too"
            raise CorrectionError(f"face {face} is on the same photo as another face of that person ({where}); "
                                  "a photo shows a person once")
        seen[photo] = face


def _identity_state(session, identity_ids: Iterable[int]) -> dict[str, dict]:
    """id -> {name, hidden, exists} of identities (keys as strings: the state is stored as JSON)."""
    hidden = db.hidden_identity_ids(session)
    state = {}
    for identity in sorted({int(i) for i in identity_ids}):
        row = session.get(db.IdentityRow, identity)
        state[str(identity)] = {"exists": row is not None, "name": row.name if row else None, "hidden": identity in hidden}
    return state


# -- writing --------------------------------------------------------------------------------------


def _place(session, faces: list[int], identity: int | None) -> None:
    """Put faces into an identity, or into the unknown pool (None); their old places are cleared."""
    for start in range(0, len(faces), 500):
        chunk = faces[start : start + 500]
        session.execute(delete(db.AssignmentRow).where(db.AssignmentRow.face_id.in_(chunk)))
        session.execute(delete(db.PoolFaceRow).where(db.PoolFaceRow.face_id.in_(chunk)))
    session.flush()
    if identity is None:
        # Already looked at by the user: it must not by itself make a pool re-clustering due.
        session.add_all(db.PoolFaceRow(face_id=face, reclustered=True) for face in faces)
    else:
        session.add_all(db.AssignmentRow(face_id=face, identity_id=int(identity), similarity=0.0, method="manual")
                        for face in faces)
    session.flush()


def _new_identity(session, faces: list[int], at: datetime, name: str | None = None) -> db.IdentityRow:
    row = db.IdentityRow(medoid_face_id=faces[0], size=len(faces), updated_at=at, name=name)
    session.add(row)
    session.flush()
    return row


class _Recorder:
    """Collects what one correction changes and writes its ``corrections`` row."""

    def __init__(self, session, action: str, at: datetime, actor: str):
        self.session, self.action, self.at, self.actor = session, action, at, actor
        self.faces_before: dict[int, int | None] = {}
        self.identities: set[int] = set()
        self.identities_before: dict[str, dict] = {}
        self.links = {"set": [], "dropped": []}

    def before(self, faces: list[int], identities: Iterable[int]) -> None:
        self.faces_before.update(_owners(self.session, faces))
        self.identities |= {int(i) for i in identities}
        self.identities_before.update(_identity_state(self.session, identities))

    def set_links(self, kind: str, pairs) -> None:
        self.links["set"] += db.set_links_in(self.session, kind, pairs, self.at, self.actor)

    def drop_links(self, faces: list[int], partners: Iterable[int], kind: str) -> None:
        partners = {int(p) for p in partners}
        for link in db.links_in(self.session, faces).must if kind == "must" else db.links_in(self.session, faces).cannot:
            a, b = link
            if (a in faces and b in partners) or (b in faces and a in partners):
                row = self.session.scalar(select(db.FaceLinkRow).where(db.FaceLinkRow.face_a == min(a, b),
                                                                       db.FaceLinkRow.face_b == max(a, b)))
                if row is not None:
                    self.links["dropped"].append([row.kind, int(row.face_a), int(row.face_b)])
                    self.session.delete(row)
        self.session.flush()

    def event(self, identity: int, action: str, details: dict) -> None:
        db.add_event(self.session, identity, action, details, self.at, self.actor)

    def finish(self, summary: str, extra_identities: Iterable[int] = ()) -> int:
        self.identities |= {int(i) for i in extra_identities}
        faces = sorted(self.faces_before)
        after_faces = _owners(self.session, faces)
        row = db.CorrectionRow(
            action=self.action, summary=summary[:1024],
            before={"faces": {str(f): self.faces_before[f] for f in faces}, "identities": self.identities_before},
            after={"faces": {str(f): after_faces.get(f) for f in faces},
                   "identities": _identity_state(self.session, self.identities)},
            links=self.links, at=self.at, actor=self.actor)
        self.session.add(row)
        self.session.flush()
        return row.id


def _policy(store, policy: Policy | None) -> Policy:
    if policy is not None:
        return policy
    from components.identities.lifecycle import policy_for_store
    from components.settings import load_settings

    return policy_for_store(store, load_settings())


# -- the corrections --------------------------------------------------------------------------------


def rename(store, identity_id, name: str, *, actor: str, clock: Clock = utc_now) -> dict:
    """Give a person a name."""
    name = clean_name(name)
    now = clock()
    with store.session() as session:
        row = _identity(session, identity_id)
        record = _Recorder(session, "rename", now, actor)
        record.before([], [row.id])
        previous, row.name, row.updated_at = row.name, name, now
        record.event(row.id, "renamed", {"from": previous, "to": name})
        correction = record.finish(f"renamed #{row.id} to {name}")
        return {"id": row.id, "name": name, "previous_name": previous, "correction": correction}


def hide(store, identity_id, hidden: bool = True, *, actor: str, clock: Clock = utc_now) -> dict:
    """Hide a person from the people page (or show it again); nothing else changes."""
    now = clock()
    with store.session() as session:
        row = _identity(session, identity_id)
        record = _Recorder(session, "hide" if hidden else "unhide", now, actor)
        record.before([], [row.id])
        is_hidden = session.get(db.HiddenIdentityRow, row.id) is not None
        if hidden and not is_hidden:
            session.add(db.HiddenIdentityRow(identity_id=row.id, at=now))
        elif not hidden and is_hidden:
            session.execute(delete(db.HiddenIdentityRow).where(db.HiddenIdentityRow.identity_id == row.id))
        session.flush()
        record.event(row.id, "hidden" if hidden else "shown", {})
        correction = record.finish(f"{'hid' if hidden else 'showed'} #{row.id}")
        return {"id": row.id, "hidden": hidden, "correction": correction}


def merge(store, into, others: Iterable, *, actor: str, clock: Clock = utc_now, policy: Policy | None = None) -> dict:
    """Merge people into the first one: their faces move, their names fill in a missing one."""
    policy = _policy(store, policy)
    now = clock()
    with store.session() as session:
        target = _identity(session, into)
        sources = []
        for other in dict.fromkeys(others):
            row = _identity(session, other)
            if row.id == target.id:
                raise CorrectionError(f"cannot merge person #{row.id} into itself")
            sources.append(row)
        if not sources:
            raise CorrectionError("select at least two people to merge")
        members = {row.id: _members(session, row.id) for row in [target, *sources]}
        photos = {identity: {photo: face for face, photo in _photos(session, faces).items()}
                  for identity, faces in members.items()}
        conflicts = merge_conflicts(photos)
        if conflicts:
            photo, faces = next(iter(conflicts.items()))
            raise CorrectionError(f"these people hold faces of one photo (faces {', '.join(map(str, faces))}), and a photo "
                                  "shows a person once: move one of those faces away first")
        moved = [face for row in sources for face in members[row.id]]
        record = _Recorder(session, "merge", now, actor)
        record.before(moved, [target.id, *(row.id for row in sources)])
        everyone = [face for faces in members.values() for face in faces]
        record.drop_links(everyone, everyone, "cannot")  # the user just said they are one person
        anchor = target.medoid_face_id
        if target.name is None:
            target.name = next((row.name for row in sources if row.name), None)
        _place(session, moved, target.id)
        record.set_links("must", [(face, anchor) for face in moved])
        for row in sources:
            record.event(row.id, "merged_into", {"into": target.id, "faces": len(members[row.id])})
        record.event(target.id, "merged", {"from": [row.id for row in sources], "faces_moved": len(moved)})
        refresh_identities(session, [target.id, *(row.id for row in sources)], policy, at=now, actor=actor)
        correction = record.finish(f"merged {', '.join('#%d' % row.id for row in sources)} into #{target.id}")
        return {"id": target.id, "name": target.name, "merged": [row.id for row in sources], "faces_moved": len(moved),
                "correction": correction}


def move(store, face_ids: Iterable, source, to, *, name: str | None = None, actor: str, clock: Clock = utc_now,
         policy: Policy | None = None, action: str = "move") -> dict:
    """Move faces of one person to another person, to a new person, or back to the unknown pool.

    Args:
        face_ids: the faces, all members of ``source``.
        source: the person they are taken from.
        to: a person's id, :data:`NEW` or :data:`UNKNOWN`.
        name: the new person's name (optional; only with :data:`NEW`).
    """
    policy = _policy(store, policy)
    faces = _face_ids(face_ids)
    now = clock()
    with store.session() as session:
        origin = _identity(session, source)
        members = set(_members(session, origin.id))
        strangers = [face for face in faces if face not in members]
        if strangers:
            raise CorrectionError(f"face(s) {', '.join(map(str, strangers[:10]))} are not in person #{origin.id} "
                                  "(the page is out of date: reload it)")
        staying = sorted(members - set(faces))
        target: db.IdentityRow | None = None
        if to == NEW:
            if name is not None and str(name).strip():
                name = clean_name(name)
            else:
                name = None
        elif to != UNKNOWN:
            target = _identity(session, to)
            if target.id == origin.id:
                raise CorrectionError("those faces are already in that person")
            _check_photo_conflicts(session, faces, target.id)
        record = _Recorder(session, action, now, actor)
        record.before(faces, [origin.id, *([target.id] if target else [])])
        # The faces are not the person they leave: forget earlier "one person" links with them.
        record.drop_links(faces, staying, "must")
        if to == NEW:
            target = _new_identity(session, faces, now, name)
            record.set_links("must", [(face, faces[0]) for face in faces[1:]])
            record.event(target.id, "created", {"by": action, "split_from": origin.id, "faces": faces})
        _place(session, faces, None if to == UNKNOWN else target.id)
        if target is not None and to != NEW:
            target_members = _members(session, target.id)
            record.drop_links(faces, target_members, "cannot")
            record.set_links("must", [(face, target.medoid_face_id) for face in faces])
            record.event(target.id, "joined", {"faces": len(faces), "from": origin.id, "by": action})
        refresh_identities(session, [origin.id, *([target.id] if target else [])], policy, at=now, actor=actor)
        session.flush()
        # Not this person: cannot-linked with every face it keeps, not only its medoid, so that
        # however a re-clustering groups that person's faces, none of them takes these along.
        record.set_links("cannot", [(face, member) for face in faces for member in _members(session, origin.id)])
        destination = "the unknown faces" if target is None else f"#{target.id}"
        record.event(origin.id, "faces_moved", {"faces": faces, "to": None if target is None else target.id, "by": action})
        correction = record.finish(f"{'not this person' if action == 'not_this_person' else 'moved'}: "
                                   f"{len(faces)} face(s) of #{origin.id} to {destination}",
                                   [target.id] if target else [])
        return {"from": origin.id, "to": None if target is None else target.id, "faces_moved": len(faces),
                "correction": correction}


def not_this_person(store, face_id, *, actor: str, clock: Clock = utc_now, policy: Policy | None = None) -> dict:
    """This face is not its person: back to the unknown faces, and never assigned to that person again."""
    with store.session() as session:
        owner = db.owners_in(session, [int(face_id)]).get(int(face_id))
    if owner is None:
        raise CorrectionError(f"face {face_id} belongs to no person")
    return move(store, [face_id], owner, UNKNOWN, actor=actor, clock=clock, policy=policy, action="not_this_person")


def _pool_faces(session, faces: list[int]) -> None:
    owners = _owners(session, faces)
    taken = [face for face in faces if owners.get(face, 0) is not None]
    if taken:
        raise CorrectionError(f"face(s) {', '.join(map(str, taken[:10]))} are no longer unknown (reload the page)")


def accept(store, face_ids: Iterable, person, *, actor: str, clock: Clock = utc_now, policy: Policy | None = None) -> dict:
    """Unknown faces are this person: they join it, must-linked with its medoid."""
    policy = _policy(store, policy)
    faces = _face_ids(face_ids)
    now = clock()
    with store.session() as session:
        target = _identity(session, person)
        _pool_faces(session, faces)
        _check_photo_conflicts(session, faces, target.id)
        record = _Recorder(session, "accept", now, actor)
        record.before(faces, [target.id])
        record.drop_links(faces, _members(session, target.id), "cannot")
        _place(session, faces, target.id)
        record.set_links("must", [(face, target.medoid_face_id) for face in faces])
        record.event(target.id, "joined", {"faces": len(faces), "by": "accept"})
        refresh_identities(session, [target.id], policy, at=now, actor=actor)
        correction = record.finish(f"accepted {len(faces)} unknown face(s) as #{target.id}")
        return {"id": target.id, "faces": len(faces), "correction": correction}


def reject(store, face_ids: Iterable, person, *, actor: str, clock: Clock = utc_now) -> dict:
    """Unknown faces are not this person: remembered, so it is never suggested or assigned again."""
    faces = _face_ids(face_ids)
    now = clock()
    with store.session() as session:
        target = _identity(session, person)
        _pool_faces(session, faces)
        record = _Recorder(session, "reject", now, actor)
        record.before(faces, [target.id])
        record.drop_links(faces, _members(session, target.id), "must")
        record.set_links("cannot", [(face, member) for face in faces for member in _members(session, target.id)])
        record.event(target.id, "rejected", {"faces": faces})
        correction = record.finish(f"{len(faces)} unknown face(s) are not #{target.id}")
        return {"id": target.id, "faces": len(faces), "correction": correction}


def new_person(store, face_ids: Iterable, *, name: str | None = None, actor: str, clock: Clock = utc_now,
               policy: Policy | None = None) -> dict:
    """Unknown faces are one new person."""
    policy = _policy(store, policy)
    faces = _face_ids(face_ids)
    name = clean_name(name) if name is not None and str(name).strip() else None
    now = clock()
    with store.session() as session:
        _pool_faces(session, faces)
        _check_photo_conflicts(session, faces, None)
        record = _Recorder(session, "new_person", now, actor)
        record.before(faces, [])
        created = _new_identity(session, faces, now, name)
        _place(session, faces, created.id)
        record.set_links("must", [(face, faces[0]) for face in faces[1:]])
        record.event(created.id, "created", {"by": "new_person", "faces": len(faces)})
        refresh_identities(session, [created.id], policy, at=now, actor=actor)
        correction = record.finish(f"{len(faces)} unknown face(s) became #{created.id}", [created.id])
        return {"id": created.id, "faces": len(faces), "correction": correction}


# -- undo ---------------------------------------------------------------------------------------------


def recent(store, limit: int = 20) -> list[dict]:
    """The latest corrections, newest first, with whether each can still be undone (only the latest can)."""
    with store.session() as session:
        rows = session.scalars(select(db.CorrectionRow).order_by(db.CorrectionRow.id.desc()).limit(int(limit))).all()
        latest = session.scalar(select(func.max(db.CorrectionRow.id)).where(db.CorrectionRow.undone_at.is_(None)))
    return [{"id": row.id, "action": row.action, "summary": row.summary, "actor": row.actor,
             "at": db.as_utc(row.at).isoformat(timespec="seconds"), "undone": row.undone_at is not None,
             "undoable": row.id == latest} for row in rows]


def undo(store, *, actor: str, clock: Clock = utc_now, policy: Policy | None = None) -> dict:
    """Undo the latest correction not yet undone.

    Raises:
        CorrectionError: nothing to undo, or the faces it moved have moved since (by a
            re-clustering, a deletion or a correction made elsewhere): nothing changes.
    """
    policy = _policy(store, policy)
    now = clock()
    with store.session() as session:
        row = session.scalar(select(db.CorrectionRow).where(db.CorrectionRow.undone_at.is_(None))
                             .order_by(db.CorrectionRow.id.desc()).limit(1))
        if row is None:
            raise CorrectionError("nothing to undo")
        after = {int(face): owner for face, owner in row.after.get("faces", {}).items()}
        before = {int(face): owner for face, owner in row.before.get("faces", {}).items()}
        now_owners = _owners(session, sorted(after))
        moved = [face for face, owner in after.items() if face not in now_owners or now_owners[face] != owner]
        if moved:
            raise CorrectionError(f"cannot undo \"{row.summary}\": {len(moved)} of its faces have changed since "
                                  "(re-clustered, deleted or corrected again); nothing was changed")
        identities_before = row.before.get("identities", {})
        # Identities the correction removed (merged away, emptied) come back under their own ids.
        for identity, state in identities_before.items():
            identity = int(identity)
            if state["exists"] and session.get(db.IdentityRow, identity) is None:
                first = next((face for face, owner in before.items() if owner == identity), None)
                if first is None:
                    raise CorrectionError(f"cannot undo \"{row.summary}\": person #{identity} cannot be rebuilt")
                session.add(db.IdentityRow(id=identity, name=state["name"], medoid_face_id=first, size=0, updated_at=now))
        session.flush()
        for owner in sorted({owner for owner in before.values()}, key=lambda value: (value is None, value or 0)):
            _place(session, sorted(face for face, was in before.items() if was == owner), owner)
        for identity, state in identities_before.items():
            current = session.get(db.IdentityRow, int(identity))
            if current is None or not state["exists"]:
                continue
            current.name = state["name"]
            is_hidden = session.get(db.HiddenIdentityRow, current.id) is not None
            if state["hidden"] and not is_hidden:
                session.add(db.HiddenIdentityRow(identity_id=current.id, at=now))
            elif not state["hidden"] and is_hidden:
                session.execute(delete(db.HiddenIdentityRow).where(db.HiddenIdentityRow.identity_id == current.id))
        # Links: remove or turn back those it set, restore those it dropped (faces still stored).
        for kind, a, b, previous in row.links.get("set", []):
            link = session.scalar(select(db.FaceLinkRow).where(db.FaceLinkRow.face_a == a, db.FaceLinkRow.face_b == b))
            if link is None or link.kind != kind:
                continue
            if previous is None:
                session.delete(link)
            else:
                link.kind = previous
        session.flush()
        existing = set(session.scalars(select(db.FaceRow.id).where(
            db.FaceRow.id.in_(sorted({face for _, a, b in row.links.get("dropped", []) for face in (a, b)})))))
        for kind, a, b in row.links.get("dropped", []):
            if a in existing and b in existing:
                db.set_links_in(session, kind, [(a, b)], now, actor)
        touched = {int(i) for i in identities_before} | {int(i) for i in row.after.get("identities", {})}
        touched |= {owner for owner in [*before.values(), *after.values()] if owner is not None}
        session.flush()
        refresh_identities(session, sorted(touched), policy, at=now, actor=actor)
        for identity in sorted(touched):
            if session.get(db.IdentityRow, identity) is not None:
                db.add_event(session, identity, "undone", {"correction": row.id, "action": row.action}, now, actor)
        row.undone_at = now
        return {"undone": row.id, "action": row.action, "summary": row.summary}


def faces_of(values) -> list[int]:
    """Face ids from a form's list of values (checked like a correction's)."""
    return _face_ids(values)
