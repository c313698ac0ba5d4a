"""Pictures on the people page: thumbnails of the stored crops, photos with the face's box drawn.

Only the store's own objects are ever read: a face id is looked up in the store, and the
crop or photo location the store recorded for it is read through
:mod:`components.identities.crops` (local folder or ``s3://``, with the same checks as
every other reader). No path ever comes from the browser.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from PIL import Image, ImageDraw

from components.identities.crops import CropReader
from components.images import BadImageError, load_image_bytes

JPEG_QUALITY = 85


class PictureError(Exception):
    """A crop or photo that cannot be shown (gone, unreadable, not an image); the message says which."""


class Pictures:
    """Reads crops and photos of one store; thumbnails are kept in memory (LRU).

    Args:
        crops_root: where the store's relative locations start (see
            :func:`components.identities.crops.crops_root_for`).
        thumbnail_px: thumbnail side.
        cache_size: thumbnails kept.
        photo_max_side: photos are shrunk to this longer side.
    """

    def __init__(self, crops_root: str | None, *, thumbnail_px: int = 112, cache_size: int = 20000,
                 photo_max_side: int = 1024):
        self.reader = CropReader(crops_root)
        self.thumbnail_px = thumbnail_px
        self.cache_size = cache_size
        self.photo_max_side = photo_max_side
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def _read(self, location: str | None, what: str) -> bytes:
        from components.storage import StorageError

        if not location:
            raise PictureError(f"no {what} is recorded")
        try:
            return self.reader.read(location)
        except StorageError as error:
            raise PictureError(f"the {what} cannot be read ({error.reason})") from None

    def thumbnail(self, face_id: int, crop_location: str | None) -> bytes:
        """A JPEG thumbnail of a face's stored crop."""
        key = (int(face_id), crop_location)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = self._read(crop_location, "crop")
        try:
            with Image.open(io.BytesIO(data)) as image:
                image = image.convert("RGB")
                image.thumbnail((self.thumbnail_px, self.thumbnail_px))
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise PictureError(f"the crop is not a readable image ({error})") from None
        thumbnail = buffer.getvalue()
        with self._lock:
            self._cache[key] = thumbnail
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return thumbnail

    def forget(self, face_ids) -> None:
        """Drop the thumbnails of these faces (their person was deleted: nothing of them stays)."""
        wanted = {int(face) for face in face_ids}
        with self._lock:
            for key in [key for key in self._cache if key[0] in wanted]:
                del self._cache[key]

    def photo_with_box(self, photo_location: str, box: tuple[float, float, float, float]) -> bytes:
        """The face's photo as JPEG, upright as it was analysed, with the face's box drawn."""
        data = self._read(photo_location, "photo")
        try:
            pixels = load_image_bytes(data)  # the loader the pipeline used: same orientation, same box coordinates
        except BadImageError as error:
            raise PictureError(f"the photo cannot be decoded ({error.reason})") from None
        image = Image.fromarray(pixels)
        x, y, w, h = box
        width = max(2, round(max(image.size) / 200))
        ImageDraw.Draw(image).rectangle([x, y, x + w, y + h], outline=(40, 220, 90), width=width)
        image.thumbnail((self.photo_max_side, self.photo_max_side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue()
