"""Lower layers never import higher ones.

Every module under components/ is parsed (nothing is imported) and each import of
``components.<package>`` is collected: absolute and relative, at the top of the module
or inside a function, under ``if TYPE_CHECKING`` too. A package may import packages of
lower layers only; the packages of one layer are independent of each other. The same
order is written out in README.md ("How it works", Layers).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "components"

# Lowest first. A package is a sub-package or a module directly under components/.
LAYERS: list[set[str]] = [
    {"settings", "datasets", "images", "storage"},  # foundations: parameters, LFW files, safe image loading, objects
    {"detect", "embed"},  # one model each: MTCNN + alignment + quality gates; the embedder
    {"cluster", "validate"},  # pure clustering; Great Expectations suites over the steps' tables
    {"identities"},  # the identity store and its life cycle (uses cluster)
    {"report", "track"},  # metrics and run reports over a store; MLflow runs and the model registry
    {"engine"},  # the one face engine: image -> faces -> crops -> embeddings, which model, main face
    {"api"},  # the verb API over the engine (the top-level package `faces` re-exports it)
    {"train"},  # networks, losses, the training loop, self-labelled retraining
    {"workflow"},  # the steps the Airflow DAGs and dvc.yaml call
    {"pipeline", "serving"},  # `faces run`, the main job; the BentoML service's cores
    {"ui"},  # the people page: review and correct identities in a browser (uses the store and the life cycle)
    {"bench"},  # benchmarks: may run anything below
    {"cli"},  # the `faces` command: top
]

# Upward imports being removed; the test tolerates exactly these (module, package) pairs
# and fails once one is gone, so that this set only shrinks. Keep it empty.
KNOWN_UPWARD: set[tuple[str, str]] = set()  # none left: keep it that way

LAYER_OF = {package: index for index, layer in enumerate(LAYERS) for package in layer}


def packages_on_disk() -> set[str]:
    names = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    names |= {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return names


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_packages(path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(package of components, line) of every import in one file, relative ones resolved."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int]] = []

    def add(dotted: str, line: int) -> None:
        parts = dotted.split(".")
        if parts[0] == "components" and len(parts) > 1 and parts[1] in known:
            found.append((parts[1], line))

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "components":  # from components import detect, api
                for alias in node.names:
                    add(f"components.{alias.name}", node.lineno)
            else:
                add(module, node.lineno)
    return found


def package_of(path: Path) -> str | None:
    """The package a file belongs to; None for components/__init__.py itself."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return None if parts == ("__init__",) else parts[0]


def all_imports() -> list[tuple[str, str, str, int]]:
    """(importing module, its package, imported package, line) across components/."""
    known = packages_on_disk()
    rows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = package_of(path)
        for target, line in imported_packages(path, known):
            if target != source:
                rows.append((module_name(path), source, target, line))
    return rows


def test_every_package_has_a_layer():
    missing = packages_on_disk() - set(LAYER_OF)
    assert not missing, f"place {sorted(missing)} in LAYERS (and in README.md's Layers paragraph)"


def test_each_package_in_one_layer():
    assert sum(len(layer) for layer in LAYERS) == len(LAYER_OF)


def test_no_import_of_a_higher_or_sibling_layer():
    bad, seen_known = [], set()
    for module, source, target, line in all_imports():
        if source is None or source not in LAYER_OF or target not in LAYER_OF:
            continue  # the root package and unplaced packages have their own tests
        if LAYER_OF[target] < LAYER_OF[source]:
            continue
        if (module, target) in KNOWN_UPWARD:
            seen_known.add((module, target))
            continue
        kind = "a sibling" if LAYER_OF[target] == LAYER_OF[source] else "a higher"
        bad.append(f"{module}:{line} imports components.{target} ({kind} layer: "
                   f"{source} is layer {LAYER_OF[source]}, {target} layer {LAYER_OF[target]})")
    assert not bad, "lower layers import higher ones:\n" + "\n".join(sorted(set(bad)))
    stale = KNOWN_UPWARD - seen_known
    assert not stale, f"these upward imports are gone: remove them from KNOWN_UPWARD: {sorted(stale)}"


def test_the_root_package_imports_no_step():
    """``import components`` stays free: no step, no model framework."""
    rows = [row for row in all_imports() if row[1] is None]
    assert not rows, rows


def test_faces_imports_only_the_api():
    path = REPO / "faces" / "__init__.py"
    targets = {target for target, _ in imported_packages(path, packages_on_disk())}
    assert targets == {"api"}, targets


def test_the_scanner_sees_every_kind_of_import(tmp_path, monkeypatch):
    """Absolute, from-components, relative and function-level imports are all found."""
    fake = tmp_path / "components"
    (fake / "detect").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "detect" / "__init__.py").write_text("")
    (fake / "detect" / "x.py").write_text(
        "import components.embed.network as n\n"
        "from components import cluster\n"
        "from ..identities import store\n"
        "from .. import track\n"
        "def f():\n"
        "    from components.bench import lfw_verify\n"
        "from . import quality\n"
    )
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    known = {"detect", "embed", "cluster", "identities", "track", "bench"}
    found = [target for target, _ in imported_packages(fake / "detect" / "x.py", known)]
    assert sorted(found) == ["bench", "cluster", "detect", "embed", "identities", "track"], found
