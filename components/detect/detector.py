"""Batched MTCNN face detection with alignment and per-face quality.

The ``mtcnn`` package's networks and shipped weights do the detection, in one of two
modes (``detect.mode``):

* ``fast`` (default): :mod:`components.detect.fast_mtcnn`, a pyramid sized to each photo
  and packed into compiled P-Net calls for the whole batch, R-Net and O-Net on crops of
  the full-resolution photos;
* ``package``: the package itself on a list of same-sized photos downscaled to
  ``max_side`` (each network once per batch; photos of different sizes grouped by
  shape so no batch pays for padding). The detector before ``fast``, kept so
  ``faces bench detect`` measures both in one run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from components.detect.align import CROP_SIZE, align_face
from components.detect.quality import blur_score, quality_failures
from components.settings import DetectParams

PACKAGE_MIN_FACE_LIMIT = 20  # px; the largest min_face_size the mtcnn package's pyramid is right for


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: (x, y, width, height) in pixels of the original photo.
        landmarks: (5, 2) float (x, y): left eye, right eye, nose, mouth left, mouth right.
        confidence: MTCNN's final-stage score in [0, 1].
        crop: (150, 150, 3) uint8 RGB, aligned to the embedder's template.
        blur: variance of the Laplacian of the aligned crop (higher is sharper).
        failures: quality gates this face failed; empty when it is usable.
        embedding: (D,) unit vector, once the engine embedded the face (usable faces only,
            unless asked for all); None before.
        model_version: the model that computed ``embedding``.
        rotation: degrees the photo was turned counter-clockwise (0, 90, 180 or 270) for MTCNN
            to find this face: a photo with no face upright is tried turned 90 and 270
            degrees (``detect.try_rotations``). Box and landmarks are always in the
            original photo's pixels; the crop is upright either way.
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    confidence: float
    crop: np.ndarray | None
    blur: float
    failures: list[str] = field(default_factory=list)
    embedding: np.ndarray | None = None
    model_version: str | None = None
    rotation: int = 0

    def to_wire(self) -> dict:
        """Plain JSON types without the crop (for the call between two services)."""
        return {"box": [float(v) for v in self.box], "landmarks": np.asarray(self.landmarks).tolist(),
                "confidence": float(self.confidence), "blur": float(self.blur), "failures": list(self.failures),
                "embedding": None if self.embedding is None else np.asarray(self.embedding, np.float32).tolist(),
                "model_version": self.model_version, "rotation": int(self.rotation)}

    @classmethod
    def from_wire(cls, data: dict) -> Face:
        """The inverse of :meth:`to_wire` (``crop`` is None)."""
        embedding = data.get("embedding")
        return cls(tuple(float(v) for v in data["box"]), np.asarray(data["landmarks"], np.float64),
                   float(data["confidence"]), None, float(data["blur"]), list(data["failures"]),
                   None if embedding is None else np.asarray(embedding, np.float32), data.get("model_version"),
                   int(data.get("rotation", 0)))

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def size(self) -> float:
        """Shorter side of the box, in pixels."""
        return float(min(self.box[2], self.box[3]))


def downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink a photo so its longer side is at most ``max_side``.

    Returns:
        The (possibly) smaller image and the factor that maps its pixel coordinates
        back to the original (1.0 when unchanged).
    """
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return image, 1.0
    factor = longest / max_side
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    return small, factor


def rows_to_boxes(rows: np.ndarray, factor: float) -> list[tuple[tuple[float, ...], np.ndarray, float]]:
    """Turn ``mtcnn`` numpy rows into (box xywh, landmarks (5, 2), confidence).

    ``mtcnn`` 1.0 rows are ``[image, x1, y1, x2, y2, confidence, 5 landmark x, 5 landmark y]``
    (its docstring claims interleaved x, y; the code emits the x's first, and a test
    pins this down).
    """
    faces = []
    for row in rows:
        x1, y1, x2, y2 = (float(v) * factor for v in row[1:5])
        landmarks = np.stack([row[6:11], row[11:16]], axis=1).astype(np.float64) * factor
        faces.append(((x1, y1, x2 - x1, y2 - y1), landmarks, float(row[5])))
    return faces


class FaceDetector:
    """MTCNN on batches of photos; returns aligned, quality-scored faces.

    The networks load on first use, so constructing a detector is free.
    """

    def __init__(self, params: DetectParams | None = None, device: str = "CPU:0", networks=None):
        self.params = params or DetectParams()
        self.device = device
        self._mtcnn = networks  # an mtcnn.MTCNN to share with another detector (its weights load once)
        self._fast = None

    @property
    def mtcnn(self):
        if self._mtcnn is None:
            from mtcnn import MTCNN  # heavy (TensorFlow); only when detection is needed

            self._mtcnn = MTCNN(device=self.device)
        return self._mtcnn

    @property
    def fast(self):
        if self._fast is None:
            from components.detect.fast_mtcnn import FastMTCNN

            self._fast = FastMTCNN(self.mtcnn, self.params)
        return self._fast

    def locate(self, images: Sequence[np.ndarray]) -> list[list[tuple[tuple[float, ...], np.ndarray, float]]]:
        """Boxes, landmarks and confidences for each photo, without cropping.

        Args:
            images: RGB uint8 arrays (H, W, 3), any sizes.

        Returns:
            One list per photo of (box xywh, landmarks (5, 2), confidence), in
            original pixel coordinates.
        """
        images = list(images)
        if self.params.mode == "fast":
            batch_size = max(1, self.params.batch_size)
            found = []
            for start in range(0, len(images), batch_size):
                found += [rows_to_boxes(rows, 1.0) for rows in self.fast.locate_rows(images[start : start + batch_size])]
            return found
        return self._locate_package(images)

    def _locate_package(self, images: Sequence[np.ndarray]) -> list[list[tuple[tuple[float, ...], np.ndarray, float]]]:
        """The ``package`` mode: the ``mtcnn`` package on same-sized batches of photos downscaled to ``max_side``."""
        p = self.params
        # mtcnn 1.0 counts its pyramid's levels as for 20-px faces whatever min_face_size says: a
        # larger one sends levels under P-Net's 12-px window (a crash, or no face found). So this
        # mode looks for faces down to 20 px at most, as it did before min_face_size became 32.
        kwargs = {"min_face_size": min(p.min_face_size, PACKAGE_MIN_FACE_LIMIT), "scale_factor": p.scale_factor,
                  "threshold_pnet": p.stage_thresholds[0], "threshold_rnet": p.stage_thresholds[1],
                  "threshold_onet": p.stage_thresholds[2]}
        prepared = [downscale(image, self.params.max_side) for image in images]
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, (small, _) in enumerate(prepared):
            by_shape[small.shape].append(index)
        found: list[list] = [[] for _ in images]
        batch_size = max(1, self.params.batch_size)
        for indices in by_shape.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                rows = self.mtcnn.detect_faces(
                    [prepared[i][0] for i in chunk],
                    box_format="xyxy",
                    output_type="numpy",
                    **kwargs,
                )
                rows = np.asarray(rows).reshape(-1, 16)
                for position, index in enumerate(chunk):
                    mine = rows[rows[:, 0] == position]
                    found[index] = rows_to_boxes(mine, prepared[index][1])
        return found

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Detect, align and quality-score every face in each photo.

        Args:
            images: RGB uint8 arrays (H, W, 3), any sizes.

        Returns:
            One list of :class:`Face` per photo (empty when it has no face), most
            confident first.
        """
        images = list(images)
        results = [self._faces(image, located) for image, located in zip(images, self.locate(images))]
        # Sideways photos (no EXIF orientation, a scanner, a phone held flat): a photo where no
        # face is found upright is tried turned, one turn after the other, until one finds faces.
        for turn in self.params.try_rotations:
            empty = [index for index, faces in enumerate(results) if not faces]
            if not empty:
                break
            turned = [np.rot90(images[index], k=turn // 90) for index in empty]
            for index, image, located in zip(empty, turned, self.locate(turned)):
                faces = self._faces(image, located)
                for face in faces:
                    face.box = turn_box_back(face.box, turn, images[index].shape)
                    face.landmarks = turn_points_back(face.landmarks, turn, images[index].shape)
                    face.rotation = int(turn)
                results[index] = faces
        return results

    def _faces(self, image: np.ndarray, located) -> list[Face]:
        """Aligned, quality-scored faces of one photo from its located boxes, most confident first."""
        faces = []
        for box, landmarks, confidence in sorted(located, key=lambda item: -item[2]):
            crop = align_face(image, landmarks, CROP_SIZE)
            blur = blur_score(crop)
            failures = quality_failures(
                confidence,
                min(box[2], box[3]),
                blur,
                min_confidence=self.params.min_confidence,
                min_face_px=self.params.min_face_px,
                min_blur=self.params.min_blur,
            )
            faces.append(Face(box, landmarks, confidence, crop, blur, failures))
        return faces


def turn_points_back(points: np.ndarray, turn: int, shape: tuple[int, ...]) -> np.ndarray:
    """(x, y) points found in a photo turned ``turn`` degrees counter-clockwise (``np.rot90``), in the photo's pixels.

    Args:
        points: (N, 2) x, y in the turned photo.
        turn: 90, 180 or 270 (0 returns the points unchanged).
        shape: (H, W, ...) of the original photo.
    """
    points = np.asarray(points, np.float64)
    height, width = shape[0], shape[1]
    x, y = points[..., 0], points[..., 1]
    if turn % 360 == 0:
        return points.copy()
    if turn % 360 == 90:
        return np.stack([width - y, x], axis=-1)
    if turn % 360 == 180:
        return np.stack([width - x, height - y], axis=-1)
    if turn % 360 == 270:
        return np.stack([y, height - x], axis=-1)
    raise ValueError(f"a turn is 90, 180 or 270 degrees; got {turn}")


def turn_box_back(box: tuple[float, ...], turn: int, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """A box (x, y, w, h) found in a photo turned ``turn`` degrees counter-clockwise, in the photo's pixels."""
    x, y, w, h = (float(value) for value in box)
    corners = turn_points_back(np.array([[x, y], [x + w, y + h]]), turn, shape)
    (left, top), (right, bottom) = corners.min(axis=0), corners.max(axis=0)
    return (float(left), float(top), float(right - left), float(bottom - top))
