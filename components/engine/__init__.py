"""The one face engine: bytes -> image -> faces -> aligned crops -> embeddings.

Every path that turns photos into faces calls it: ``faces run``, the ``face_ingest``
DAG's steps, the BentoML service, the training data readers and the benchmarks. So
a photo gives the same faces, the same main face and the same embeddings everywhere.

* :class:`FaceEngine` (:mod:`~components.engine.core`): detect (MTCNN, batched), align,
  quality gates, embed the usable faces with one model, pick the main face.
* :func:`main_face_index`: the one main-face rule.
* :class:`FaceModel` and :func:`model_for_store` (:mod:`~components.engine.models`): a
  model is weights + preprocessing + its calibrated thresholds; which model a store uses.
* :func:`reembed` (:mod:`~components.engine.reembed`): move a store to a new model.
"""

from components.engine.core import FaceEngine, PhotoFaces, main_face_index, verify_faces
from components.engine.models import FaceModel, champion_model, load_model, model_for_store

__version__ = "1.0.0"


def step_versions() -> dict[str, str]:
    """Version of every step a photo goes through, recorded with each run and batch."""
    from components import cluster, detect, embed, identities, images, report

    modules = (images, detect, embed, cluster, identities, report)
    return {**{module.__name__.rsplit(".", 1)[-1]: module.__version__ for module in modules}, "engine": __version__}


__all__ = ["FaceEngine", "FaceModel", "PhotoFaces", "champion_model", "load_model", "main_face_index",
           "model_for_store", "step_versions", "verify_faces"]
