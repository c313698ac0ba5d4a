"""Identity store: photos, faces, identities (medoids) and assignments, in SQL."""

from components.identities.store import FaceMatrix, IdentityStore, NewFace

__version__ = "1.0.0"

__all__ = ["FaceMatrix", "IdentityStore", "NewFace"]
