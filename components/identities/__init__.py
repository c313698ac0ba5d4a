"""Identity store and life cycle: photos, faces, identities (medoids), the unknown pool.

* :mod:`~components.identities.store`: the SQL tables and the queries on them.
* :mod:`~components.identities.lifecycle`: assignment, pool re-clustering, medoids (pure core + store wrappers).
* :mod:`~components.identities.operations`: rename, merge, split, delete, with an audit trail.
* :mod:`~components.identities.stream`: the life cycle in memory, for benchmarks.
* :mod:`~components.identities.cli`: ``faces identities ...``.
"""

from components.identities.lifecycle import (
    Policy,
    assign_faces,
    enforce_cannot_link,
    false_accept_rate,
    update_identities,
)
from components.identities.store import FaceMatrix, IdentityStore, NewFace, NewPhoto, RejectedFile

__version__ = "1.1.0"

__all__ = [
    "FaceMatrix",
    "IdentityStore",
    "NewFace",
    "NewPhoto",
    "Policy",
    "RejectedFile",
    "assign_faces",
    "enforce_cannot_link",
    "false_accept_rate",
    "update_identities",
]
