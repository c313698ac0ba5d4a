"""Safe loading of user photos: RGB arrays, or a clear reason why not."""

from components.images.load import (
    IMAGE_EXTENSIONS,
    BadImageError,
    decodable_formats,
    enable_heif,
    encode_jpeg,
    file_sha256,
    iter_image_files,
    load_image,
    load_image_bytes,
    sniff_non_photo,
    write_jpegs,
)

__version__ = "1.0.0"

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "__version__",
    "decodable_formats",
    "enable_heif",
    "encode_jpeg",
    "file_sha256",
    "iter_image_files",
    "load_image",
    "load_image_bytes",
    "sniff_non_photo",
    "write_jpegs",
]
