"""Detect and align: MTCNN boxes and landmarks, aligned 150x150 crops, quality gates."""

from components.detect.align import CROP_SIZE, TEMPLATE_150, align_face, similarity_transform
from components.detect.detector import Face, FaceDetector
from components.detect.quality import blur_score, quality_failures

__version__ = "1.2.0"

__all__ = [
    "CROP_SIZE",
    "TEMPLATE_150",
    "Face",
    "FaceDetector",
    "align_face",
    "blur_score",
    "quality_failures",
    "similarity_transform",
]
