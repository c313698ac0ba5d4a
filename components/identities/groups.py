"""Disjoint sets (union-find with path halving): the groups that must-links join.

One implementation for the store's export of the user's corrections and for the
identity life cycle that obeys them.
"""

from __future__ import annotations

from collections.abc import Hashable


class DisjointSets:
    """Elements joined into groups; an element not seen yet is a group of its own."""

    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}

    def find(self, item: Hashable) -> Hashable:
        """The root of ``item``'s group (the same for every member)."""
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: Hashable, b: Hashable) -> None:
        """Join ``a``'s group into ``b``'s: the root of ``b``'s group becomes the root of both."""
        self.parent[self.find(a)] = self.find(b)

    def __contains__(self, item: Hashable) -> bool:
        return item in self.parent

    def __bool__(self) -> bool:
        return bool(self.parent)
