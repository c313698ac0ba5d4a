"""Load user photos safely: every bad file becomes a `BadImageError` with a reason.

Photo folders contain anything: empty files, half-copied JPEGs, text files with a
``.jpg`` suffix, decompression bombs, 16-bit scans, CMYK prints, animated GIFs.
This module turns each of them into either an RGB ``uint8`` array or a
`BadImageError` whose ``code`` the pipeline can count and whose ``reason`` a
person can read, so one bad file never stops a run.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "enable_heif",
    "file_sha256",
    "iter_image_files",
    "load_image",
    "load_image_bytes",
    "sniff_non_photo",
]

logger = logging.getLogger(__name__)

# The suffixes photos usually carry. Informational only: folders are walked by
# content, every regular non-hidden file is tried, whatever its name.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
        ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".heic", ".heif", ".avif",
    }
)

# Only the decoders for the raster formats photo libraries hold are ever tried.
# A file's suffix says nothing about its content, and Pillow's other plugins
# (EPS runs Ghostscript, plus many rarely audited parsers) are attack surface we
# do not need. "PPM" covers PBM/PGM/PPM; TGA is tried last because its header
# has no signature; HEIF comes from the optional pillow-heif package.
_ALLOWED_FORMATS = (
    "JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "AVIF", "HEIF", "TGA"
)

# ISO base media (``ftyp`` box) brands of still images: HEIC/HEIF/AVIF photos
# share the container of MP4/MOV videos.
_STILL_IMAGE_BRANDS = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis", b"mif2"}
)
_SNIFF_BYTES = 4096

_WHITE = (255, 255, 255, 255)
_TIFF_BITS_PER_SAMPLE = 258
_TIFF_SAMPLE_FORMAT = 339
_TIFF_SIGNED_INT = 2


class BadImageError(ValueError):
    """A file that cannot be used as an image, with a machine code and a reason.

    Attributes:
        path: The offending file or folder, or ``"<bytes>"`` for in-memory data.
        code: One of ``empty``, ``not_an_image``, ``not_a_photo`` (a
            recognised non-photo: a video or a PDF document), ``truncated``,
            ``too_many_pixels``, ``too_small``, ``unreadable``,
            ``unsupported_mode``.
        reason: A sentence for people, e.g. in a run report.
    """

    def __init__(self, path: Path | str, code: str, reason: str) -> None:
        # Passing every field to ValueError keeps the error picklable, so it can
        # cross process boundaries (multiprocessing workers, task queues).
        super().__init__(path, code, reason)
        self.path = path
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason} [{self.code}]"


def load_image(
    path: str | os.PathLike[str],
    max_pixels: int = 40_000_000,
    min_side: int = 20,
) -> np.ndarray:
    """Load an image file as an upright RGB array.

    The pixel count is checked from the header before any pixel is decoded,
    EXIF orientation is applied, the first frame of multi-frame files is used,
    transparency is composited onto white and high bit depths are rescaled.

    Args:
        path: The image file.
        max_pixels: Largest accepted ``width * height``.
        min_side: Smallest accepted width or height, in pixels.

    Returns:
        A C-contiguous ``uint8`` array of shape ``(height, width, 3)``.

    Raises:
        BadImageError: The file is unreadable, empty, not an image, truncated,
            too large, too small or in a pixel mode that cannot be converted.
    """
    path = Path(path)
    try:
        file = path.open("rb")
    except OSError as exc:
        reason = f"the file cannot be opened: {_describe(exc)}"
        raise BadImageError(path, "unreadable", reason) from exc
    with file:
        return _decode(file, path, max_pixels, min_side)


def load_image_bytes(
    data: bytes,
    max_pixels: int = 40_000_000,
    min_side: int = 20,
) -> np.ndarray:
    """Load an image held in memory, e.g. an upload, exactly like `load_image`.

    Args:
        data: The encoded image file content.
        max_pixels: Largest accepted ``width * height``.
        min_side: Smallest accepted width or height, in pixels.

    Returns:
        A C-contiguous ``uint8`` array of shape ``(height, width, 3)``.

    Raises:
        BadImageError: As `load_image`, with ``path`` set to ``"<bytes>"``.
    """
    return _decode(io.BytesIO(data), "<bytes>", max_pixels, min_side)


def iter_image_files(
    root: str | os.PathLike[str],
) -> Iterator[tuple[Path, BadImageError | None]]:
    """Walk a folder tree in a deterministic order and yield candidate image files.

    Entries are visited in sorted name order, depth first. Every regular file is
    yielded whatever its suffix (or none): whether it is a photo is decided by
    its content, when `load_image` reads it. Only hidden entries (names
    starting with ``.``, e.g. ``.DS_Store`` or ``._IMG_1.jpg``) are skipped
    silently. Symlinked folders are followed once; links that lead back to a
    visited folder are ignored.

    Args:
        root: The folder to walk.

    Returns:
        An iterator of ``(path, None)`` for each regular file, and of
        ``(path, BadImageError)`` with code ``unreadable`` for each folder that
        cannot be listed or entry that is not a regular file (a broken link,
        pipe or device);
        the walk continues after those.

    Raises:
        NotADirectoryError: ``root`` is not an existing folder, which is a
            configuration mistake rather than a bad file.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {root} does not exist or is not a folder")
    return _walk(root, visited=set())


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hash a file's content without reading it into memory at once.

    Args:
        path: The file to hash.

    Returns:
        The lowercase hexadecimal SHA-256 digest of the file content.

    Raises:
        BadImageError: With code ``unreadable`` if the file cannot be read.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as exc:
        reason = f"the file cannot be read: {_describe(exc)}"
        raise BadImageError(path, "unreadable", reason) from exc


def _decode(file: BinaryIO, path: Path | str, max_pixels: int, min_side: int) -> np.ndarray:
    try:
        is_empty = not file.read(1)
    except OSError as exc:
        reason = f"the file cannot be read: {_describe(exc)}"
        raise BadImageError(path, "unreadable", reason) from exc
    if is_empty:
        raise BadImageError(path, "empty", "the file is empty (0 bytes)")
    try:
        file.seek(0)
        head = file.read(_SNIFF_BYTES)
        file.seek(0)
    except OSError as exc:
        reason = f"the file cannot be read: {_describe(exc)}"
        raise BadImageError(path, "unreadable", reason) from exc
    kind = sniff_non_photo(head)
    if kind is not None:
        # Known non-photo content never reaches a decoder (TGA has no signature
        # and could otherwise claim some of it).
        raise BadImageError(path, "not_a_photo", kind)

    with _open(file, path) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise BadImageError(
                path,
                "too_many_pixels",
                f"{width}x{height} is {width * height:,} pixels, above the limit of "
                f"{max_pixels:,} (possible decompression bomb)",
            )
        if min(width, height) < min_side:
            reason = f"{width}x{height} is smaller than the minimum side of {min_side} px"
            raise BadImageError(path, "too_small", reason)
        try:
            # Decoding is where cut-off and corrupt data shows up; Pillow only
            # read the header so far.
            image.load()
        except Image.DecompressionBombError as exc:
            raise _pillow_bomb_error(path, exc) from exc
        except Exception as exc:  # untrusted data can make a decoder raise anything
            reason = f"the image data is incomplete or corrupt: {_describe(exc)}"
            raise BadImageError(path, "truncated", reason) from exc
        _apply_exif_orientation(image, path)
        return _to_rgb_array(image, path)


def _open(file: BinaryIO, path: Path | str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check right after opening is the limit that
            # counts; Pillow's global threshold would only add noise.
            # catch_warnings is process-global, but the only filter it can leak
            # between threads is this same harmless "ignore".
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(file, formats=_available_formats())
    except Image.DecompressionBombError as exc:
        raise _pillow_bomb_error(path, exc) from exc
    except UnidentifiedImageError as exc:
        accepted = ", ".join(_available_formats())
        reason = f"not an image: the content is not a recognised image (accepted: {accepted})"
        raise BadImageError(path, "not_an_image", reason) from exc
    except Exception as exc:  # a malformed header can make a parser raise anything
        reason = f"the image header is corrupt: {_describe(exc)}"
        raise BadImageError(path, "not_an_image", reason) from exc


def _pillow_bomb_error(path: Path | str, exc: Exception) -> BadImageError:
    # Pillow's hard limit (twice Image.MAX_IMAGE_PIXELS) still applies when a
    # caller passes a max_pixels above it.
    reason = f"Pillow refused it as a decompression bomb: {exc}"
    return BadImageError(path, "too_many_pixels", reason)


def sniff_non_photo(head: bytes) -> str | None:
    """Name known non-photo content from a file's first bytes, e.g. ``"video file (MP4/MOV)"``.

    Args:
        head: The first bytes of the file (a few KB are plenty).

    Returns:
        A reason for people (``"video file (...)"`` or ``"not an image: PDF
        document"``), or None when the content is not a known non-photo.
    """
    if len(head) >= 12 and head[4:8] == b"ftyp":
        if head[8:12] not in _STILL_IMAGE_BRANDS:
            return "video file (MP4/MOV)"
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video file (AVI)"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "video file (Matroska/WebM)"
    if _is_mpeg_ts(head):
        return "video file (MPEG-TS)"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "video file (MPEG)"
    if head[:3] == b"FLV":
        return "video file (FLV)"
    if head[:16] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9\x00\xaa\x00\x62\xce\x6c":
        return "video file (WMV/ASF)"
    if b"%PDF-" in head[:1024]:  # PDF readers accept the marker anywhere in the first 1 KB
        return "not an image: PDF document"
    return None


def _is_mpeg_ts(head: bytes) -> bool:
    # 188-byte packets (.ts), or 192-byte ones with a 4-byte timestamp (.m2ts/.mts),
    # each starting with the sync byte 0x47: two packets in a row are needed.
    for offset, size in ((0, 188), (4, 192)):
        if len(head) > offset + size and head[offset] == 0x47 and head[offset + size] == 0x47:
            return True
    return False


def decodable_formats() -> tuple[str, ...]:
    """The Pillow formats photos are ever decoded with (the allow-list, as installed)."""
    return _available_formats()


def _available_formats() -> tuple[str, ...]:
    # Image.open raises KeyError for a format whose plugin is missing (e.g. a
    # Pillow built without WebP), so ask only for the registered ones.
    Image.init()
    _register_heif()
    return tuple(name for name in _ALLOWED_FORMATS if name in Image.OPEN)


_heif_tried = False


def enable_heif() -> None:
    """Let Pillow open HEIC/HEIF photos when pillow-heif is installed (idempotent, lazy)."""
    _register_heif()


def _register_heif() -> None:
    # HEIC (iPhone photos) needs pillow-heif; registered on first use, not on
    # import, and the loader works without it.
    global _heif_tried
    if _heif_tried:
        return
    _heif_tried = True
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    try:
        # Pillow reads AVIF itself; let pillow-heif add HEIF only.
        register_heif_opener(thumbnails=False)
    except Exception as exc:  # a broken native library must not stop the run
        logger.warning("HEIC support unavailable: %s", _describe(exc))


def _apply_exif_orientation(image: Image.Image, path: Path | str) -> None:
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # broken metadata must not cost usable pixels
        logger.warning("%s: ignoring unreadable EXIF orientation: %s", path, _describe(exc))


def _to_rgb_array(image: Image.Image, path: Path | str) -> np.ndarray:
    try:
        if image.mode == "I" or image.mode.startswith("I;16"):
            gray = _scale_to_8_bit(np.asarray(image), _integer_max_value(image))
            rgb = np.stack([gray] * 3, axis=-1)
        elif image.mode == "F":
            rgb = np.stack([_float_to_8_bit(np.asarray(image))] * 3, axis=-1)
        elif image.has_transparency_data:
            rgb = np.array(_composite_on_white(image))
        else:
            rgb = np.array(image if image.mode == "RGB" else image.convert("RGB"))
    except ValueError as exc:
        reason = f"pixel mode {image.mode!r} cannot be converted to RGB: {_describe(exc)}"
        raise BadImageError(path, "unsupported_mode", reason) from exc
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _integer_max_value(image: Image.Image) -> int:
    if image.mode.startswith("I;16"):
        return 0xFFFF
    # Mode "I" is a 32-bit container; the real depth is only declared by TIFF.
    # Everything else that yields "I" (older PNG, PGM) stores 16-bit samples.
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return 0xFFFF
    bits = _first(tags.get(_TIFF_BITS_PER_SAMPLE, 16))
    is_signed = _first(tags.get(_TIFF_SAMPLE_FORMAT, 1)) == _TIFF_SIGNED_INT
    return (1 << (bits - is_signed)) - 1


def _first(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, tuple) else value


def _scale_to_8_bit(values: np.ndarray, max_value: int) -> np.ndarray:
    # Rescale by the declared depth, rounding to nearest (65535 -> 255,
    # 32768 -> 128); Pillow's own convert() would clip everything above 255.
    values = np.clip(values.astype(np.int64), 0, max_value)
    return ((values * 255 + max_value // 2) // max_value).astype(np.uint8)


def _float_to_8_bit(values: np.ndarray) -> np.ndarray:
    # Float images carry no depth: treat them as 0..1 when they fit, else 0..255.
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if values.max(initial=0.0) <= 1.0:
        values = values * 255.0
    return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def _composite_on_white(image: Image.Image) -> Image.Image:
    # White, not black: a dark face on a transparent background must stay visible.
    if image.mode == "La":
        # Premultiplied alpha (TIFF) only converts to RGBA by way of LA.
        image = image.convert("LA")
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")


def _walk(
    directory: Path, visited: set[tuple[int, int]]
) -> Iterator[tuple[Path, BadImageError | None]]:
    try:
        info = os.stat(directory)
        if (info.st_dev, info.st_ino) in visited:
            return
        visited.add((info.st_dev, info.st_ino))
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as exc:
        reason = f"the folder cannot be listed: {_describe(exc)}"
        yield directory, BadImageError(directory, "unreadable", reason)
        return

    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if _is(entry.is_dir):
            yield from _walk(path, visited)
        elif _is(entry.is_file):
            yield path, None
        else:
            # Opening a pipe would block the run; a broken link would only
            # fail later with a vaguer message.
            yield path, BadImageError(
                path, "unreadable", "not a regular file (a broken link, pipe or device)"
            )


def _is(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except OSError:
        return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def encode_jpeg(pixels: np.ndarray, quality: int = 92) -> bytes:
    """JPEG bytes of an RGB uint8 array: how face crops are stored, by every ingest path."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


JPEG_WRITERS = 8  # threads: Pillow's encoder and S3 round trips release the GIL, so they overlap


def write_jpegs(storage, items: Sequence[tuple[str, np.ndarray]], *, workers: int = JPEG_WRITERS) -> None:
    """Encode RGB arrays as JPEG and write them under their keys, concurrently.

    Args:
        storage: a :class:`components.storage.Storage` (local or S3); one client shared by
            every thread. ``put_bytes`` writes each object whole (temporary name, then rename).
        items: ``(key, pixels)`` per image.
        workers: threads.

    Raises:
        The first failed write's error, once every write has ended.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not items:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        list(pool.map(lambda item: storage.put_bytes(item[0], encode_jpeg(item[1])), items))
