"""Readers for Labeled Faces in the Wild (deep-funneled), as fetched by DVC.

Expected layout under the root (default ``data/lfw``)::

    images_deepfunneled/<Name>/<Name>_NNNN.jpg
    pairs.txt            View 2: header "10<TAB>300", then per fold 300 matched
                         lines "name n1 n2" and 300 mismatched "name1 n1 name2 n2"
    pairsDevTrain.txt    View 1: header "N", then N matched and N mismatched lines
    pairsDevTest.txt     same format as pairsDevTrain.txt
    people.txt           header "10", then per fold a count line and
                         "name<TAB>count" lines
    lfw-names.txt        "name<TAB>count" for every person

Folds are numbered from 1, as the LFW README does ("the first set", "the next
9 sets"); fold 0 marks the View 1 development files, which have no folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "LFW_ROOT_DEFAULT",
    "Pair",
    "demo_subset",
    "image_path",
    "list_identities",
    "read_pairs",
    "read_people_folds",
]

LFW_ROOT_DEFAULT = Path("data/lfw")
IMAGES_DIR = "images_deepfunneled"


@dataclass(frozen=True)
class Pair:
    """One verification pair.

    Attributes:
        path_a: First image.
        path_b: Second image.
        same: True for a matched pair (same person).
        fold: 1-10 for View 2 (``pairs.txt``), 0 for the View 1 dev files.
    """

    path_a: Path
    path_b: Path
    same: bool
    fold: int


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"LFW data not found at {path}. Run `make setup` (it runs `dvc pull`) "
        f"from the repository root, or pass root= pointing at a deep-funneled LFW copy."
    )


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise _missing(path)
    return [line for line in path.read_text().splitlines() if line.strip()]


def image_path(root: Path | str, name: str, index: int) -> Path:
    """Path of the ``index``-th (1-based) image of ``name``.

    Args:
        root: LFW root directory.
        name: Person name as in the file lists, e.g. ``George_W_Bush``.
        index: Image number as in pairs.txt, e.g. 10 for ``_0010.jpg``.

    Returns:
        ``<root>/images_deepfunneled/<name>/<name>_{index:04d}.jpg`` (not checked
        for existence).
    """
    return Path(root) / IMAGES_DIR / name / f"{name}_{index:04d}.jpg"


def _parse_pair(root: Path, line: str, same: bool, fold: int, where: str) -> Pair:
    fields = line.split()
    try:
        if same and len(fields) == 3:
            name, i, j = fields
            return Pair(image_path(root, name, int(i)), image_path(root, name, int(j)), True, fold)
        if not same and len(fields) == 4:
            name_a, i, name_b, j = fields
            path_a, path_b = image_path(root, name_a, int(i)), image_path(root, name_b, int(j))
            return Pair(path_a, path_b, False, fold)
    except ValueError:
        pass
    kind = "name n1 n2" if same else "name1 n1 name2 n2"
    raise ValueError(f"{where}: expected a {'matched' if same else 'mismatched'} pair "
                     f"'{kind}', got {line!r}")


def read_pairs(root: Path | str = LFW_ROOT_DEFAULT, file: str = "pairs.txt") -> list[Pair]:
    """Read a pairs file: View 2 ``pairs.txt`` or a View 1 dev file.

    The header decides the format: two numbers (folds, pairs per half) is the
    View 2 layout, one number (matched count) the dev layout, whose pairs get
    ``fold=0``. Line positions, not field counts, decide matched vs.
    mismatched, so a malformed file fails loudly instead of mislabelling.

    Args:
        root: LFW root directory.
        file: File name inside ``root``: ``pairs.txt``, ``pairsDevTrain.txt``
            or ``pairsDevTest.txt``.

    Returns:
        Pairs in file order.

    Raises:
        FileNotFoundError: If the file is missing (run ``make setup``).
        ValueError: If the file does not match its header.
    """
    root = Path(root)
    path = root / file
    lines = _read_lines(path)
    header = [int(x) for x in lines[0].split()]
    if len(header) == 2:
        n_folds, n_half = header
        blocks = [(fold, lines[1 + (fold - 1) * 2 * n_half:1 + fold * 2 * n_half])
                  for fold in range(1, n_folds + 1)]
    elif len(header) == 1:
        n_folds, n_half = 1, header[0]
        blocks = [(0, lines[1:])]
    else:
        raise ValueError(f"{path}: unexpected header {lines[0]!r}")
    if len(lines) - 1 != n_folds * 2 * n_half:
        raise ValueError(f"{path}: header {lines[0]!r} promises {n_folds * 2 * n_half} "
                         f"pairs, file has {len(lines) - 1}")
    pairs = []
    for fold, block in blocks:
        for k, line in enumerate(block):
            pairs.append(_parse_pair(root, line, k < n_half, fold, f"{path} fold {fold}"))
    return pairs


def read_people_folds(root: Path | str = LFW_ROOT_DEFAULT) -> list[list[tuple[str, int]]]:
    """Read the View 2 person-level split from ``people.txt``.

    Args:
        root: LFW root directory.

    Returns:
        One list per fold (fold 1 first) of ``(name, image_count)``.

    Raises:
        FileNotFoundError: If the file is missing (run ``make setup``).
        ValueError: If the file does not match its counts.
    """
    path = Path(root) / "people.txt"
    lines = _read_lines(path)
    n_folds = int(lines[0])
    folds: list[list[tuple[str, int]]] = []
    pos = 1
    try:
        for _ in range(n_folds):
            n_people = int(lines[pos])
            rows = [line.split() for line in lines[pos + 1:pos + 1 + n_people]]
            folds.append([(name, int(count)) for name, count in rows])
            if len(folds[-1]) != n_people:
                raise ValueError("fold is shorter than its count")
            pos += 1 + n_people
    except ValueError as exc:
        raise ValueError(f"{path}: malformed near line {pos + 1}: {exc}") from exc
    if pos != len(lines):
        raise ValueError(f"{path}: {len(lines) - pos} lines left after {n_folds} folds")
    return folds


def list_identities(root: Path | str = LFW_ROOT_DEFAULT) -> dict[str, list[Path]]:
    """Map every person to their images, from the image folder tree.

    Hidden entries (e.g. a stray ``.DS_Store``) and non-jpg files are skipped;
    folders with no jpg at all are left out.

    Args:
        root: LFW root directory.

    Returns:
        ``{name: [image paths]}``, names and paths sorted.

    Raises:
        FileNotFoundError: If the image folder is missing (run ``make setup``).
    """
    images_root = Path(root) / IMAGES_DIR
    if not images_root.is_dir():
        raise _missing(images_root)
    identities: dict[str, list[Path]] = {}
    for person in sorted(images_root.iterdir()):
        if person.name.startswith(".") or not person.is_dir():
            continue
        images = sorted(p for p in person.iterdir()
                        if not p.name.startswith(".") and p.suffix.lower() == ".jpg")
        if images:
            identities[person.name] = images
    return identities


def demo_subset(
    root: Path | str = LFW_ROOT_DEFAULT,
    n_people: int = 40,
    min_images: int = 10,
    max_images_per_person: int = 20,
) -> dict[str, list[Path]]:
    """Deterministic small subset of LFW for demos and quick runs.

    People with at least ``min_images`` images, sorted by name, are sampled at
    evenly spaced positions over that list (so the pick spans the alphabet
    rather than being all "A" names); each keeps their first
    ``max_images_per_person`` images in sorted order.

    Args:
        root: LFW root directory.
        n_people: People to select.
        min_images: Minimum images a person needs to be eligible.
        max_images_per_person: Cap on images kept per person.

    Returns:
        ``{name: [image paths]}`` with ``n_people`` entries, sorted by name.

    Raises:
        FileNotFoundError: If the data is missing (run ``make setup``).
        ValueError: If fewer than ``n_people`` people are eligible, or
            ``n_people`` < 1.
    """
    if n_people < 1:
        raise ValueError(f"n_people must be >= 1, got {n_people}")
    identities = list_identities(root)
    eligible = sorted(name for name, imgs in identities.items() if len(imgs) >= min_images)
    if len(eligible) < n_people:
        raise ValueError(f"only {len(eligible)} people have >= {min_images} images, "
                         f"cannot pick {n_people}")
    # With n_people <= len(eligible) the spacing is >= 1, so the rounded
    # positions are distinct.
    picks = np.linspace(0, len(eligible) - 1, n_people).round().astype(int)
    return {eligible[i]: identities[eligible[i]][:max_images_per_person] for i in picks}
