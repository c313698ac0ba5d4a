"""Dataset readers."""

from components.datasets.lfw import (
    LFW_ROOT_DEFAULT,
    Pair,
    demo_subset,
    image_path,
    list_identities,
    read_pairs,
    read_people_folds,
)

__all__ = [
    "LFW_ROOT_DEFAULT",
    "Pair",
    "demo_subset",
    "image_path",
    "list_identities",
    "read_pairs",
    "read_people_folds",
]
