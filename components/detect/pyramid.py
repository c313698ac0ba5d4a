"""The fast MTCNN's image pyramid, packed into canvases: pure numpy, no TensorFlow.

P-Net is fully convolutional: a 12x12 window, stride 2. Every level of every photo's
pyramid is placed at even coordinates in a canvas (one, or a few when the batch's
pyramids exceed a memory bound), so one compiled call runs P-Net on the whole pyramid
of a batch of photos. A window that lies
wholly inside one level sees only that level's pixels, so reading back only those
windows gives what P-Net gives on each level alone; windows across two levels are
never read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PNET_CELL = 12  # P-Net's window, in pixels of a pyramid level
PNET_STRIDE = 2
CANVAS_STEP = 32  # canvas widths and heights are multiples of this
WIDTH_FACTORS = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2)  # canvas widths tried, over the widest level's


def smallest_face(shape: tuple[int, ...], min_face_size: float, min_face_fraction: float, max_side: int) -> float:
    """The smallest face, in pixels of the photo, that the pyramid looks for.

    The larger of: ``min_face_size`` pixels, ``min_face_fraction`` of the photo's shorter
    side (a full-HD photo is not searched for 20-pixel faces unless asked), and the size
    at which the pyramid's largest level would be longer than ``max_side`` (the cap on
    P-Net's input, whatever the photo's size). Never below P-Net's 12-pixel window: the
    photo is never enlarged.
    """
    height, width = shape[0], shape[1]
    wanted = max(float(min_face_size), min_face_fraction * min(height, width))
    capped = PNET_CELL * max(height, width) / max_side
    return max(wanted, capped, float(PNET_CELL))


def pyramid_scales(shape: tuple[int, ...], smallest: float, scale_factor: float) -> list[float]:
    """Scales of the pyramid's levels: the first maps ``smallest`` onto P-Net's window; each next
    one is ``scale_factor`` of the one before, down to a level whose shorter side is one window."""
    short = min(shape[0], shape[1])
    scale = PNET_CELL / smallest
    scales = []
    while short * scale >= PNET_CELL:
        scales.append(scale)
        scale *= scale_factor
    return scales


def level_size(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    """(height, width) of a level at ``scale``; at least one P-Net window."""
    return (max(PNET_CELL, round(shape[0] * scale)), max(PNET_CELL, round(shape[1] * scale)))


def strip_width(sizes: list[tuple[int, int]], max_pixels: int) -> int:
    """The canvases' width for a batch: of a few widths from the widest level's to twice it
    (multiples of 32), the one whose packing wastes the fewest pixels."""
    widest = max((size[1] for size in sizes), default=PNET_CELL)
    tallest = max((size[0] for size in sizes), default=PNET_CELL)
    area = sum(h * w for h, w in sizes)
    best, best_fill = 0, -1.0
    for factor in WIDTH_FACTORS:
        width = math.ceil(factor * widest / CANVAS_STEP) * CANVAS_STEP
        _, heights = pack(sizes, width, max(tallest, max_pixels // width))
        fill = area / (sum(heights) * width)
        if fill > best_fill:
            best, best_fill = width, fill
    return best


@dataclass(frozen=True)
class Placement:
    """Where one pyramid level sits: canvas index, top-left corner (even), size."""

    canvas: int
    top: int
    left: int
    height: int
    width: int


def pack(sizes: list[tuple[int, int]], width: int, max_height: int) -> tuple[list[Placement], list[int]]:
    """Shelf-pack rectangles (height, width) into canvases ``width`` wide and at most ``max_height`` tall.

    Tallest first, each goes on the first shelf with room, else on a new shelf of the
    first canvas with room, else in a new canvas. Corners are even, so P-Net's stride-2
    windows line up with each level's own.

    Returns:
        One placement per size (in the given order) and each canvas's height, a multiple
        of ``CANVAS_STEP``.
    """
    if any(w > width for _, w in sizes):
        raise ValueError(f"a level wider than the canvas ({width} px)")
    even = lambda value: value + (value % 2)  # noqa: E731
    shelves: list[list[int]] = []  # [canvas, top, height, used width]
    heights: list[int] = []  # used height of each canvas
    placed: list[Placement | None] = [None] * len(sizes)
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i][0], -sizes[i][1])):
        height, level_width = sizes[index]
        for shelf in shelves:
            if shelf[2] >= height and shelf[3] + level_width <= width:
                placed[index] = Placement(shelf[0], shelf[1], shelf[3], height, level_width)
                shelf[3] = even(shelf[3] + level_width)
                break
        else:
            canvas = next((c for c, used in enumerate(heights) if used + height <= max_height), None)
            if canvas is None:
                heights.append(0)
                canvas = len(heights) - 1
            top = heights[canvas]
            heights[canvas] = even(top + height)
            shelves.append([canvas, top, height, even(level_width)])
            placed[index] = Placement(canvas, top, 0, height, level_width)
    return placed, [math.ceil(used / CANVAS_STEP) * CANVAS_STEP for used in heights]  # type: ignore[return-value]


def output_side(side: int) -> int:
    """P-Net's output size along a canvas side of ``side`` pixels: conv 3, pool 2, conv 3, conv 3."""
    return (side - 2 + 1) // 2 - 4


def level_cells(placement: Placement) -> tuple[slice, slice]:
    """The output cells whose 12x12 windows lie wholly inside the level (rows, columns)."""
    rows = (placement.height - PNET_CELL) // PNET_STRIDE + 1
    cols = (placement.width - PNET_CELL) // PNET_STRIDE + 1
    top, left = placement.top // PNET_STRIDE, placement.left // PNET_STRIDE
    return slice(top, top + rows), slice(left, left + cols)


def level_map(placements: list[Placement], canvas: int, height: int, width: int) -> np.ndarray:
    """(out_h, out_w) int32 for one canvas: the level each output cell reads, -1 where a window is not wholly in one."""
    owner = np.full((output_side(height), output_side(width)), -1, np.int32)
    for level, placement in enumerate(placements):
        if placement.canvas == canvas:
            rows, cols = level_cells(placement)
            owner[rows, cols] = level
    return owner


def proposals(scores: np.ndarray, regression: np.ndarray, owner: np.ndarray, placements: list[Placement],
              level_image: np.ndarray, level_scale: np.ndarray, threshold: float) -> np.ndarray:
    """P-Net's face windows above ``threshold``, in pixels of their photos.

    Follows the ``mtcnn`` package's ``generate_bounding_box`` (window corners at 2i+1 and
    2i+12, regression scaled by the window's 11-pixel side), then divides by the level's
    scale on each axis.

    Args:
        scores: (out_h, out_w) face probability over one canvas.
        regression: (out_h, out_w, 4) x1, y1, x2, y2 offsets.
        owner: :func:`level_map` of that canvas.
        placements: one per level.
        level_image: (levels,) the photo each level belongs to.
        level_scale: (levels, 2) the level's size over its photo's, (y, x).
        threshold: P-Net's face threshold.

    Returns:
        (N, 7): photo, x1, y1, x2, y2, score, level.
    """
    row, col = np.nonzero((scores > threshold) & (owner >= 0))
    if not len(row):
        return np.empty((0, 7))
    level = owner[row, col]
    tops = np.array([p.top for p in placements]) // PNET_STRIDE
    lefts = np.array([p.left for p in placements]) // PNET_STRIDE
    y = (row - tops[level]) * PNET_STRIDE  # the window's corner in the level's own pixels
    x = (col - lefts[level]) * PNET_STRIDE
    reg = regression[row, col]
    side = PNET_CELL - 1
    x1 = x + 1 + reg[:, 0] * side
    y1 = y + 1 + reg[:, 1] * side
    x2 = x + PNET_CELL + reg[:, 2] * side
    y2 = y + PNET_CELL + reg[:, 3] * side
    scale_y, scale_x = level_scale[level, 0], level_scale[level, 1]
    rows = np.stack([level_image[level], x1 / scale_x, y1 / scale_y, x2 / scale_x, y2 / scale_y,
                     scores[row, col], level], axis=1)
    return rows[np.argsort(-rows[:, 5], kind="stable")]
