"""Photos in, faces with embeddings out: the work the embedder service batches.

A thin wrapper around the one face engine (:class:`components.engine.FaceEngine`): it
adds the :class:`~components.serving.model.ModelHolder` (the model in service, swapped
atomically) and one lock around the TensorFlow models. A call takes a batch of photos
(from many requests at once, gathered by BentoML's adaptive batching), detects every
face, aligns them and embeds all crops in one forward pass. Each result names the model
that computed it.
"""

from __future__ import annotations

import threading

import numpy as np

from components.embed import INPUT_SIZE
from components.engine import FaceEngine as CoreEngine
from components.engine import PhotoFaces
from components.serving.model import LoadedModel, ModelHolder
from components.settings import DetectParams


class FaceEngine:
    """Detect, align and embed with the model in service, one call at a time.

    Args:
        holder: the model in service.
        detect_params: MTCNN parameters and quality gates (the ``detect`` section).
        max_faces: most confident faces kept per photo.
    """

    def __init__(self, holder: ModelHolder, detect_params: DetectParams, max_faces: int = 20) -> None:
        self.holder = holder
        self.core = CoreEngine(detect_params, max_faces=int(max_faces))
        # Keras models are not documented as safe to call from several threads at once, and
        # on a CPU two concurrent batches only fight over the same cores: one at a time.
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Run the detector once (its first call builds the graphs: seconds)."""
        with self._lock:
            self.core.detect([np.full((160, 160, 3), 127, np.uint8)])

    def analyse(self, images: list[np.ndarray]) -> tuple[list[PhotoFaces], LoadedModel]:
        """Faces of each photo, every one embedded (answers list them all), and the model used.

        Returns:
            One :class:`~components.engine.PhotoFaces` per photo (most confident first, at
            most ``max_faces``, main face chosen), and the model that computed every
            embedding of this call.
        """
        with self._lock:
            model = self.holder.current  # one read: the whole call uses this model
            return self.core.analyse(list(images), model=model, all_faces=True), model

    def embed_crops(self, crops: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
        """Embeddings of aligned (N, 150, 150, 3) uint8 crops, and the model that computed them."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3) or crops.dtype != np.uint8:
            raise ValueError(f"crops must be uint8 of shape (N, {INPUT_SIZE}, {INPUT_SIZE}, 3), got {crops.dtype} {crops.shape}")
        with self._lock:
            model = self.holder.current
            return self.core.embed(crops, model), model
