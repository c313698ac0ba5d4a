"""The model in service: the registry's champion, swapped without dropping requests.

:class:`ModelHolder` keeps one :class:`LoadedModel` (the embedder, its version and where
it came from). :meth:`ModelHolder.refresh` asks the registry which file the alias points
at and, when that changed, loads and warms the new model *beside* the old one, then
replaces a single reference. A request reads that reference once and uses what it got
to the end, so requests in flight finish on the old model and new ones start on the
new one; nothing is ever half-swapped and nothing waits for a load.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from components.embed import INPUT_SIZE
from components.embed.embedder import Embedder
from components.embed.thresholds import Thresholds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where a model file comes from, and its thresholds (as ``components.track.registry.ModelRef``)."""

    version: int | None
    path: Path
    source: str
    thresholds: Thresholds | None = None


class ModelUnavailable(RuntimeError):
    """No model could be resolved or loaded; the message says why."""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded, warmed embedder and what identifies it.

    Attributes:
        embedder: the embedder (its Keras model already loaded).
        version: the content version (``Embedder.version``: name + digest); embeddings are
            comparable only within one version, and the identity store records it per face.
        registry_version: the MLflow registry version, or None for the local model.
        source: ``registry`` or ``local``.
        path: the ``.keras`` file.
        generation: 1 for the first model loaded by this process, +1 per swap.
        loaded_at: ISO time of the load.
        thresholds: the model's calibrated thresholds (verify for /verify, assign for /identify).
    """

    embedder: Embedder
    version: str
    registry_version: int | None
    source: str
    path: Path
    generation: int
    loaded_at: str
    file_stamp: tuple[int, int]
    thresholds: Thresholds | None = None

    def describe(self) -> dict:
        """JSON-ready description, named in every response."""
        return {
            "model_version": self.version,
            "registry_version": self.registry_version,
            "source": self.source,
            "generation": self.generation,
            "loaded_at": self.loaded_at,
            "thresholds": self.thresholds.as_dict() if self.thresholds else None,
        }


def resolve_champion(alias: str = "champion") -> ModelSource:
    """The model to serve: the identity store's active model, else the registry's ``alias``.

    With an identity store (``FACES_STORE_URL``), serving follows the store: a newly
    promoted champion is served once the re-embed moved the store to it, so /identify
    never compares a photo with medoids of another model. Without a store, the registry's
    model for ``alias``, or the local model without a registry.

    Raises:
        ModelUnavailable: the store or the registry is configured but cannot be read.
    """
    import os

    try:
        from components.engine.models import store_model_ref
        from components.track.registry import resolve
    except ImportError:  # the tracking package is optional for a bare serving install
        from components.settings import load_settings

        settings = load_settings()
        return ModelSource(None, settings.model_path, "local", Thresholds.from_settings(settings))
    store_url = os.environ.get("FACES_STORE_URL", "").strip()
    try:
        record = _store(store_url).model("active") if store_url else None
        ref = store_model_ref(record) if record is not None else resolve(alias)
    except Exception as error:  # TrackingError, a database down, MLflow failing in its own ways
        raise ModelUnavailable(f"cannot resolve the model to serve ({alias!r}): {error}") from error
    return ModelSource(ref.version, Path(ref.path), ref.source, ref.thresholds)


_STORES: dict = {}


def _store(url: str):
    from components.identities import IdentityStore

    if url not in _STORES:
        _STORES[url] = IdentityStore(url)
    return _STORES[url]


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_size


class ModelHolder:
    """Holds the model in service and swaps in a newly promoted one atomically.

    Args:
        resolver: returns the :class:`ModelSource` to serve (default :func:`resolve_champion`).
        alias: the registry alias passed to the resolver.
        batch_size: the embedder's forward-pass batch size.
    """

    def __init__(self, resolver: Callable[[str], ModelSource] | None = None, alias: str = "champion",
                 batch_size: int = 64) -> None:
        self._resolver = resolver or resolve_champion
        self.alias = alias
        self.batch_size = batch_size
        self._current: LoadedModel | None = None
        self._refresh_lock = threading.Lock()  # one load at a time; readers never take it
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def current(self) -> LoadedModel:
        """The model to use now. Read it once per request and keep using what you got.

        Raises:
            ModelUnavailable: nothing loaded yet.
        """
        model = self._current
        if model is None:
            raise ModelUnavailable(self.last_error or "the model is still loading")
        return model

    @property
    def loaded(self) -> LoadedModel | None:
        """The model in service, or None before the first successful load."""
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def refresh(self) -> tuple[bool, LoadedModel | None, LoadedModel]:
        """Load the model the alias points at now, if it is not the one in service.

        Returns:
            (whether a new model was swapped in, the model in service before this call's
            swap, the model in service afterwards); concurrent calls are serialised, so
            "before" is never a model another call already replaced.

        Raises:
            ModelUnavailable: the alias cannot be resolved or the file not loaded; the
                model in service (if any) stays.
        """
        with self._refresh_lock:
            try:
                wanted = self._resolver(self.alias)
                current = self._current
                if current is not None and self._same(current, wanted):
                    self.last_error = None
                    return False, current, current
                loaded = self._load(wanted, generation=1 if current is None else current.generation + 1)
            except ModelUnavailable as error:
                self.last_error = str(error)
                raise
            except Exception as error:  # a corrupt file, Keras refusing it: keep serving the old one
                self.last_error = f"cannot load the {self.alias!r} model: {type(error).__name__}: {error}"
                raise ModelUnavailable(self.last_error) from error
            if current is not None and loaded.version == current.version:
                # Same weights under a new registry version or path: keep the warm model, record the new origin.
                loaded = LoadedModel(current.embedder, current.version, loaded.registry_version, loaded.source,
                                     loaded.path, current.generation, current.loaded_at, loaded.file_stamp,
                                     loaded.thresholds)
                self._current = loaded
                return False, current, loaded
            self._current = loaded  # the swap: one reference assignment
            self.last_error = None
            logger.info("serving model %s (registry version %s, %s)", loaded.version, loaded.registry_version,
                        loaded.source)
            return True, current, loaded

    @staticmethod
    def _same(current: LoadedModel, wanted: ModelSource) -> bool:
        if (current.registry_version, current.path, current.thresholds) != (wanted.version, Path(wanted.path),
                                                                           wanted.thresholds):
            return False
        try:
            # The local file can be replaced in place (faces setup-model): notice that too.
            return _stamp(Path(wanted.path)) == current.file_stamp
        except OSError:
            return True  # vanished file: keep what is loaded rather than fail

    def _load(self, wanted: ModelSource, generation: int) -> LoadedModel:
        path = Path(wanted.path)
        if not path.is_file():
            raise ModelUnavailable(f"model file {path} does not exist (run `make setup` or `faces setup-model`)")
        stamp = _stamp(path)
        embedder = Embedder(path, batch_size=self.batch_size)
        # Build and run the graph once now, so the first request after a swap is not the slow one.
        embedder.embed(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8))
        version = f"{embedder.version}"
        return LoadedModel(embedder, version, wanted.version, wanted.source, path, generation,
                           datetime.now(UTC).isoformat(timespec="seconds"), stamp, wanted.thresholds)

    def start_polling(self, interval_s: float) -> None:
        """Check for a newly promoted model every ``interval_s`` seconds in a daemon thread."""
        if interval_s <= 0 or self._poller is not None:
            return

        def poll() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.refresh()
                except ModelUnavailable as error:
                    logger.warning("model poll: %s (still serving %s)", error,
                                   self._current.version if self._current else "nothing")

        self._poller = threading.Thread(target=poll, name="model-poll", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        """Stop the poller (it ends at its next wake-up)."""
        self._stop.set()

