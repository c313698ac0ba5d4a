"""Photos in, faces with embeddings out: the work the embedder service batches.

One :class:`FaceEngine` per process holds the MTCNN detector and the
:class:`~components.serving.model.ModelHolder`. A call takes a batch of photos (from
many requests at once, gathered by BentoML's adaptive batching), detects every face in
one batched MTCNN pass per photo size, aligns them and embeds all crops in one forward
pass. Each result names the model that computed it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from components.detect import FaceDetector
from components.embed import INPUT_SIZE
from components.serving.model import LoadedModel, ModelHolder
from components.settings import DetectParams


@dataclass
class FaceResult:
    """One face of a photo, ready for an answer (coordinates in the photo sent to the engine)."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    confidence: float
    blur: float
    failures: list[str]
    embedding: np.ndarray  # (D,) float32, unit norm

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def size(self) -> float:
        return float(min(self.box[2], self.box[3]))

    def to_wire(self) -> dict:
        """Plain JSON types, for the call between the two services."""
        return {"box": list(self.box), "landmarks": np.asarray(self.landmarks).tolist(),
                "confidence": self.confidence, "blur": self.blur, "failures": list(self.failures),
                "embedding": np.asarray(self.embedding, np.float32).tolist()}

    @classmethod
    def from_wire(cls, data: dict) -> FaceResult:
        """The inverse of :meth:`to_wire`."""
        return cls(tuple(float(v) for v in data["box"]), np.asarray(data["landmarks"], np.float64),
                   float(data["confidence"]), float(data["blur"]), list(data["failures"]),
                   np.asarray(data["embedding"], np.float32))


class FaceEngine:
    """Detect, align and embed, with one lock around the TensorFlow models.

    Args:
        holder: the model in service.
        detect_params: MTCNN parameters and quality gates (the ``detect`` section).
        max_faces: most confident faces kept per photo.
    """

    def __init__(self, holder: ModelHolder, detect_params: DetectParams, max_faces: int = 20) -> None:
        self.holder = holder
        self.detector = FaceDetector(detect_params)
        self.max_faces = int(max_faces)
        # Keras models are not documented as safe to call from several threads at once, and
        # on a CPU two concurrent batches only fight over the same cores: one at a time.
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Run the detector once (its first call builds the graphs: seconds)."""
        with self._lock:
            self.detector.detect([np.full((160, 160, 3), 127, np.uint8)])

    def analyse(self, images: list[np.ndarray]) -> tuple[list[list[FaceResult]], LoadedModel]:
        """Faces with embeddings for each photo.

        Args:
            images: RGB uint8 photos, any sizes.

        Returns:
            One list per photo (most confident first, at most ``max_faces``), and the model
            that computed every embedding of this call.
        """
        with self._lock:
            detections = self.detector.detect(list(images))
            model = self.holder.current  # one read: the whole call uses this model
            kept = [faces[: self.max_faces] for faces in detections]
            crops = [face.crop for faces in kept for face in faces]
            vectors = (model.embedder.embed(np.stack(crops)) if crops
                       else np.zeros((0, 0), np.float32))
        results, row = [], 0
        for faces in kept:
            photo = []
            for face in faces:
                photo.append(FaceResult(tuple(float(v) for v in face.box), face.landmarks, float(face.confidence),
                                        float(face.blur), list(face.failures), vectors[row]))
                row += 1
            results.append(photo)
        return results, model

    def embed_crops(self, crops: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
        """Embeddings of aligned (N, 150, 150, 3) uint8 crops, and the model that computed them."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3) or crops.dtype != np.uint8:
            raise ValueError(f"crops must be uint8 of shape (N, {INPUT_SIZE}, {INPUT_SIZE}, 3), got {crops.dtype} {crops.shape}")
        with self._lock:
            model = self.holder.current
            return model.embedder.embed(crops), model
