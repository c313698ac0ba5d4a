"""The fast MTCNN: the ``mtcnn`` package's three networks and weights, run in fewer, compiled calls.

What differs from calling the package (``FaceDetector`` mode ``package``):

* the pyramid starts at the smallest face worth looking for in *this* photo
  (:func:`components.detect.pyramid.smallest_face`), so a full-HD photo is not searched
  for 20-pixel faces unless asked;
* P-Net sees a downscaled copy only (the pyramid's largest level, area-averaged once from
  the photo; the smaller levels from that copy), and every level of every photo of a
  batch goes through P-Net in one compiled call, packed into same-sized canvases;
* R-Net and O-Net read their 24x24 and 48x48 crops from the full-resolution photo, so
  boxes and landmarks keep the photo's precision, and each runs once per batch.

Box arithmetic, thresholds and non-maximum suppression are the package's own functions,
so the faces found are the package's up to the pyramid's start and resampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from components.detect.pyramid import (
    level_map,
    level_size,
    pack,
    proposals,
    pyramid_scales,
    smallest_face,
    strip_width,
)
from components.settings import DetectParams

# Pixels of one P-Net canvas (one compiled call): bounds the activations' memory (10 channels
# of float32 per input pixel after the first convolution) whatever the batch.
PNET_PIXELS_PER_CALL = 8_000_000


def _normalise(pixels: np.ndarray) -> np.ndarray:
    """The package's input scaling: [0, 255] -> about [-1, 1]."""
    return (np.asarray(pixels, np.float32) - 127.5) / 128.0


def area_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to (height, width) by area averaging (the package's pyramid uses area resizing)."""
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BOX))


def nms_by_group(rows: np.ndarray, groups: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """The package's non-maximum suppression within each group, most confident first.

    The package keeps a box only when no more confident box of its group overlaps it by
    more than ``threshold`` (suppressed boxes suppress too), which is what it gives.
    """
    from mtcnn.utils.bboxes import iou, nms

    if not len(rows):
        return rows
    order = np.argsort(-rows[:, 5], kind="stable")
    rows, groups = rows[order], groups[order]
    kept = []
    for group in np.unique(groups):
        mine = rows[groups == group]
        kept.append(mine[nms(iou(mine[:, 1:5], method=method), threshold)])
    return np.concatenate(kept, axis=0)


class FastMTCNN:
    """MTCNN on batches of photos of any sizes, with the package's networks.

    Args:
        package: an ``mtcnn.MTCNN`` whose stages hold the loaded networks (shared with the
            ``package`` mode, so the weights load once).
        params: the pyramid and thresholds (``min_face_size``, ``min_face_fraction``,
            ``max_side``, ``scale_factor``, ``stage_thresholds``).
    """

    def __init__(self, package, params: DetectParams) -> None:
        import tensorflow as tf

        self.params = params
        self.device = package.device
        pnet, rnet, onet = (package.get_stage(stage_id=i).model for i in (1, 2, 3))
        # Compiled once each: the canvas's height and width and the number of crops are left
        # free, so a new batch does not compile again.
        self._pnet = tf.function(lambda x: pnet(x), input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        self._rnet = tf.function(lambda x: rnet(x), input_signature=[tf.TensorSpec([None, 24, 24, 3], tf.float32)])
        self._onet = tf.function(lambda x: onet(x), input_signature=[tf.TensorSpec([None, 48, 48, 3], tf.float32)])

    def locate_rows(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per photo, the package's rows ``[photo, x1, y1, x2, y2, confidence, 5 x, 5 y]`` in its own pixels."""
        import tensorflow as tf

        images = [np.ascontiguousarray(image) for image in images]
        if not images:
            return []
        with tf.device(self.device):
            boxes = self._pnet_stage(images)
            boxes = self._rnet_stage(images, boxes)
            rows = self._onet_stage(images, boxes)
        rows = fit_to_images(rows, [image.shape for image in images])
        return [rows[rows[:, 0] == index] for index in range(len(images))]

    # -- P-Net ------------------------------------------------------------------------------

    def pyramid(self, images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Every level of every photo: the level images, their photo, their scale (y, x)."""
        p = self.params
        levels, owners, scales = [], [], []
        for index, image in enumerate(images):
            smallest = smallest_face(image.shape, p.min_face_size, p.min_face_fraction, p.max_side)
            sizes = [level_size(image.shape, scale) for scale in pyramid_scales(image.shape, smallest, p.scale_factor)]
            if not sizes:
                continue
            first = area_resize(image, sizes[0])  # the one resize of the full photo
            for size in sizes:
                levels.append(area_resize(first, size))
                owners.append(index)
                scales.append((size[0] / image.shape[0], size[1] / image.shape[1]))
        return levels, np.asarray(owners, np.float64), np.asarray(scales, np.float64).reshape(-1, 2)

    def _pnet_stage(self, images: Sequence[np.ndarray]) -> np.ndarray:
        from mtcnn.utils.bboxes import resize_to_square

        levels, level_image, level_scale = self.pyramid(images)
        if not levels:
            return np.empty((0, 6))
        sizes = [level.shape[:2] for level in levels]
        width = strip_width(sizes, PNET_PIXELS_PER_CALL)
        placements, heights = pack(sizes, width, max(max(h for h, _ in sizes), PNET_PIXELS_PER_CALL // width))
        canvases = [np.zeros((height, width, 3), np.float32) for height in heights]
        for level, place in zip(levels, placements):
            canvases[place.canvas][place.top : place.top + place.height, place.left : place.left + place.width] = _normalise(level)
        found = []
        for index, canvas in enumerate(canvases):
            regression, scores = (out.numpy()[0] for out in self._pnet(canvas[None]))
            found.append(proposals(scores[..., 1], regression, level_map(placements, index, *canvas.shape[:2]),
                                   placements, level_image, level_scale, self.params.stage_thresholds[0]))
        found = np.concatenate(found)
        # The package's two suppressions: within each level (0.5), then across a photo's levels (0.7).
        found = nms_by_group(found, found[:, 0] * 10_000 + found[:, 6], 0.5, "union")
        found = nms_by_group(found[:, :6], found[:, 0], 0.7, "union")
        return resize_to_square(found)

    # -- R-Net and O-Net on crops of the full photos -----------------------------------------

    def _crops(self, images: Sequence[np.ndarray], boxes: np.ndarray, size: int) -> np.ndarray:
        """(N, size, size, 3) normalised crops of the boxes, bilinear, from the full-resolution photos.

        The package's ``extract_patches`` arithmetic (coordinates over the photo's size)."""
        import tensorflow as tf

        patches = np.empty((len(boxes), size, size, 3), np.float32)
        for index in np.unique(boxes[:, 0]).astype(int):
            mine = np.nonzero(boxes[:, 0] == index)[0]
            height, width = images[index].shape[:2]
            coords = boxes[mine][:, [2, 1, 4, 3]] / np.array([height, width, height, width], np.float64)
            crops = tf.image.crop_and_resize(images[index][None], coords.astype(np.float32),
                                             np.zeros(len(mine), np.int32), (size, size))
            patches[mine] = crops.numpy()
        return _normalise(patches)

    def _rnet_stage(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        from mtcnn.utils.bboxes import adjust_bboxes, resize_to_square

        if not len(boxes):
            return boxes
        offsets, scores = (out.numpy() for out in self._rnet(self._crops(images, boxes, 24)))
        boxes = boxes.copy()
        boxes[:, 5] = scores[:, 1]
        boxes = adjust_bboxes(boxes, offsets)
        boxes = boxes[boxes[:, 5] > self.params.stage_thresholds[1]]
        boxes = nms_by_group(boxes, boxes[:, 0], 0.7, "union")
        return resize_to_square(boxes)

    def _onet_stage(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        from mtcnn.utils.bboxes import adjust_bboxes

        if not len(boxes):
            return np.empty((0, 16))
        offsets, landmarks, scores = (out.numpy() for out in self._onet(self._crops(images, boxes, 48)))
        width = boxes[:, 3:4] - boxes[:, 1:2] + 1
        height = boxes[:, 4:5] - boxes[:, 2:3] + 1
        landmarks = np.concatenate([width * landmarks[:, :5] + boxes[:, 1:2] - 1,
                                    height * landmarks[:, 5:] + boxes[:, 2:3] - 1], axis=1)
        boxes = boxes.copy()
        boxes[:, 5] = scores[:, 1]
        rows = np.concatenate([adjust_bboxes(boxes, offsets), landmarks], axis=1)
        rows = rows[rows[:, 5] > self.params.stage_thresholds[2]]
        return nms_by_group(rows, rows[:, 0], 0.7, "min")


def fit_to_images(rows: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> np.ndarray:
    """Boxes clipped to their photos (the package's ``fit_to_image``); landmarks left as found."""
    if not len(rows):
        return np.empty((0, 16))
    rows = rows.copy()
    sizes = np.array([(shape[0], shape[1]) for shape in shapes], np.float64)[rows[:, 0].astype(int)]
    rows[:, [1, 3]] = np.clip(rows[:, [1, 3]], 0, sizes[:, 1:2] - 1)
    rows[:, [2, 4]] = np.clip(rows[:, [2, 4]], 0, sizes[:, 0:1] - 1)
    return rows
