"""Which model embeds: a model is weights + preprocessing + its calibrated thresholds.

One resolver for every consumer. The registry (:mod:`components.track.registry`) names
versions and their thresholds; the identity store records which model its embeddings
came from (its *active* model) and only ever compares embeddings of that model. So:

* :func:`champion_model`: the registry's champion, or the local pretrained model when no
  registry is configured (``MLFLOW_TRACKING_URI`` unset and no local store).
* :func:`model_for_store`: the model a store's faces must be embedded with: its active
  model. A store without one adopts the champion (or, for a store filled before models
  were versioned, the model its embeddings came from). A newer champion is used only
  after :func:`components.engine.reembed.reembed` moved the store to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from components.embed import Embedder
from components.embed.thresholds import Thresholds
from components.identities.store import ModelMismatchError, StoreModel


@dataclass(frozen=True)
class FaceModel:
    """A loaded embedder with its identity and thresholds.

    Attributes:
        embedder: the Keras embedder (loads on first use).
        thresholds: its calibrated verify / cluster / assign thresholds.
        registry_version: MLflow registry version, None for the local pretrained model.
        source: ``registry`` or ``local``.
    """

    embedder: Embedder
    thresholds: Thresholds
    registry_version: int | None
    source: str

    @property
    def version(self) -> str:
        """Content version (name + weights digest): embeddings compare only within one."""
        return self.embedder.version

    @property
    def path(self) -> Path:
        return self.embedder.model_path

    def store_model(self) -> StoreModel:
        """How the identity store records this model."""
        return StoreModel(self.version, self.registry_version, self.source, self.thresholds.as_dict())

    def describe(self) -> dict:
        """JSON-ready: which model, from where, with which thresholds (in reports and answers)."""
        return {"model_version": self.version, "registry_version": self.registry_version, "source": self.source,
                "thresholds": self.thresholds.as_dict()}


@lru_cache(maxsize=8)
def _embedder(path: str, batch_size: int, stamp: tuple[int, int]) -> Embedder:
    # Keyed by the file's mtime and size too: a model file replaced in place is a new model.
    return Embedder(Path(path), batch_size=batch_size)


def load_model(ref, batch_size: int = 64, thresholds: Thresholds | None = None) -> FaceModel:
    """A :class:`FaceModel` for a registry reference (:class:`components.track.registry.ModelRef`).

    Embedders are shared within a process (same file, same batch size).
    """
    path = Path(ref.path)
    if not path.is_file():
        raise FileNotFoundError(f"no embedder at {path}: run `make setup` (or `faces setup-model`)")
    info = path.stat()
    embedder = _embedder(str(path.resolve()), int(batch_size), (info.st_mtime_ns, info.st_size))
    return FaceModel(embedder, thresholds or ref.thresholds, ref.version, ref.source)


def champion_model(settings, alias: str = "champion") -> FaceModel:
    """The model behind ``alias`` in the registry, or the local model without a registry."""
    from components.track.registry import resolve

    return load_model(resolve(alias), settings.embed.batch_size)


def store_model_ref(record: StoreModel):
    """The file of the model a store records (a registry version, or the local model), with the
    thresholds the store took over at its switch (:class:`components.track.registry.ModelRef`)."""
    from dataclasses import replace

    from components.track.registry import resolve_version

    ref = resolve_version(record.registry_version if record.source == "registry" else None, require_thresholds=False)
    return replace(ref, thresholds=Thresholds.from_dict(record.thresholds))


def model_of_store_record(record: StoreModel, settings) -> FaceModel:
    """Load the model a store records, checking its weights are the ones that made the embeddings."""
    model = load_model(store_model_ref(record), settings.embed.batch_size)
    if model.version != record.version:
        raise ModelMismatchError(
            f"the identity store's model is {record.version}, but "
            f"{'registry version ' + str(record.registry_version) if record.registry_version else 'the local model'} "
            f"is {model.version} now: its embeddings cannot be compared with the store's")
    return model


def model_for_store(store, settings) -> FaceModel:
    """The model whose embeddings ``store`` holds; a store without one adopts one and records it.

    Raises:
        ModelMismatchError: the store's embeddings come from a model neither recorded nor
            available (the champion's and the local model's weights differ from them).
    """
    record = store.model("active")
    if record is not None:
        return model_of_store_record(record, settings)
    model = champion_model(settings)
    versions = set(store.embedded_versions())
    if versions and versions != {model.version}:
        from components.track.registry import resolve_version

        local = load_model(resolve_version(None), settings.embed.batch_size)
        if versions != {local.version}:
            raise ModelMismatchError(f"the identity store holds embeddings of {sorted(versions)}, made by no model "
                                     f"known here (champion {model.version}, local {local.version})")
        model = local
    adopted = store.adopt_model(model.store_model())
    # Another task may have adopted a model at the same moment: use whatever the store holds.
    return model if adopted.version == model.version else model_of_store_record(adopted, settings)
