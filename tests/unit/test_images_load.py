"""Unit tests for components.images: every bad file gets a reason, every good one RGB."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

import components.images as images
from components.images import (
    IMAGE_EXTENSIONS,
    BadImageError,
    file_sha256,
    iter_image_files,
    load_image,
    load_image_bytes,
)


def _import_bad_image_helpers():
    # tests/ is not a package, so the shared helper is imported by file path.
    path = Path(__file__).resolve().parents[1] / "fixtures" / "make_bad_images.py"
    spec = importlib.util.spec_from_file_location("make_bad_images", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_bad_images = _import_bad_image_helpers()

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    directory = tmp_path_factory.mktemp("bad_images")
    return directory, make_bad_images.write_bad_images(directory)


def _code(path: Path, **kwargs) -> str:
    with pytest.raises(BadImageError) as caught:
        load_image(path, **kwargs)
    return caught.value.code


def _pillow_says(path: Path, attribute: str):
    # Confirms the fixture really is the case under test (mode, format, frames).
    with Image.open(path) as image:
        return getattr(image, attribute)


def _assert_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8
    assert array.flags.c_contiguous


def _assert_color(pixel: np.ndarray, expected: tuple[int, int, int], tolerance: int = 2) -> None:
    difference = np.abs(pixel.astype(int) - np.array(expected))
    assert difference.max() <= tolerance, f"{tuple(pixel)} is not {expected}"


# --- public surface -------------------------------------------------------------------


def test_package_exposes_version_and_api():
    assert images.__version__ == "1.0.0"
    assert set(images.__all__) >= {
        "IMAGE_EXTENSIONS",
        "BadImageError",
        "load_image",
        "load_image_bytes",
        "iter_image_files",
        "file_sha256",
    }
    assert IMAGE_EXTENSIONS >= {
        ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
        ".ppm", ".pgm", ".pbm", ".tga", ".heic", ".avif",
    }


def test_bad_image_error_is_a_value_error_that_survives_pickling():
    error = BadImageError(Path("a/b.jpg"), "truncated", "the data stops early")

    copy = pickle.loads(pickle.dumps(error))

    assert isinstance(error, ValueError)
    assert copy.path == Path("a/b.jpg")
    assert (copy.code, copy.reason) == ("truncated", "the data stops early")
    assert str(copy) == f"{Path('a/b.jpg')}: the data stops early [truncated]"


def test_importing_does_not_change_pillow_globals():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


# --- bad files ------------------------------------------------------------------------


def test_bad_image_cases_cover_every_content_problem(bad_images):
    _, expected = bad_images
    assert set(expected.values()) == {
        "empty", "not_an_image", "truncated", "too_many_pixels", "too_small"
    }


BAD_IMAGE_NAMES = [
    "empty.jpg", "notes_named_as.jpg", "truncated.jpg", "truncated.png", "bomb.png", "tiny.png"
]


def test_parametrized_names_match_the_bad_image_helper(bad_images):
    _, expected = bad_images
    assert sorted(expected) == sorted(BAD_IMAGE_NAMES)


@pytest.mark.parametrize("name", BAD_IMAGE_NAMES)
def test_each_bad_image_gives_its_reason_code(bad_images, name):
    directory, expected = bad_images

    with pytest.raises(BadImageError) as caught:
        load_image(directory / name)

    assert caught.value.code == expected[name]
    assert caught.value.path == directory / name
    assert caught.value.reason


def test_bomb_is_small_on_disk_and_rejected_from_its_header(bad_images, monkeypatch):
    directory, _ = bad_images
    bomb = directory / "bomb.png"
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    # With Pillow's own guard off, only load_image's check stands between the
    # header and a 900 MB allocation.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)

    with pytest.raises(BadImageError) as caught:
        load_image(bomb)

    assert bomb.stat().st_size < 200_000
    assert caught.value.code == "too_many_pixels"
    assert "30000x30000" in caught.value.reason
    assert decoded == []


def test_pillow_bomb_error_is_reported_as_too_many_pixels(bad_images):
    directory, _ = bad_images
    # A caller may allow more pixels than Pillow's hard limit (2 * 89.5 M).
    assert _code(directory / "bomb.png", max_pixels=10**10) == "too_many_pixels"


def test_max_pixels_is_the_given_limit(tmp_path):
    path = tmp_path / "hundred.png"
    Image.new("RGB", (100, 100), RED).save(path)

    assert _code(path, max_pixels=9_999) == "too_many_pixels"
    _assert_rgb(load_image(path, max_pixels=10_000), 100, 100)


def test_min_side_applies_to_the_shorter_side(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (200, 19), RED).save(path)

    assert _code(path) == "too_small"
    _assert_rgb(load_image(path, min_side=19), 19, 200)


def test_truncated_file_is_rejected_not_padded(bad_images):
    directory, _ = bad_images

    assert _code(directory / "truncated.jpg") == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_missing_file_and_folder_are_unreadable(tmp_path):
    assert _code(tmp_path / "missing.jpg") == "unreadable"
    assert _code(tmp_path) == "unreadable"


def test_permission_denied_file_is_unreadable(tmp_path, monkeypatch):
    locked = tmp_path / "locked.jpg"
    Image.new("RGB", (30, 30)).save(locked)
    real_open = Path.open

    def open_unless_locked(self, *args, **kwargs):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_unless_locked)

    with pytest.raises(BadImageError) as caught:
        load_image(locked)

    assert caught.value.code == "unreadable"
    assert "Permission denied" in caught.value.reason


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their permissions")
def test_file_without_read_permission_is_unreadable(tmp_path):
    locked = tmp_path / "locked.jpg"
    Image.new("RGB", (30, 30)).save(locked)
    locked.chmod(0)
    try:
        assert _code(locked) == "unreadable"
    finally:
        locked.chmod(0o600)


@pytest.mark.parametrize("pillow_format", ["PCX", "EPS", "ICO"])
def test_other_formats_are_not_decoded_even_with_an_image_suffix(tmp_path, pillow_format):
    path = tmp_path / "portrait.jpg"
    Image.new("RGB", (30, 30), RED).save(path, pillow_format)
    assert _pillow_says(path, "format") == pillow_format  # Pillow alone would accept it

    with pytest.raises(BadImageError) as caught:
        load_image(path)
    assert caught.value.code == "not_an_image"
    assert caught.value.reason.startswith("not an image")
    assert "EPS" not in caught.value.reason.split("accepted:")[1]


@pytest.mark.parametrize(
    ("name", "pillow_format", "mode"),
    [("face.pgm", "PPM", "L"), ("face.ppm", "PPM", "RGB"), ("face.pbm", "PPM", "1"), ("face.tga", "TGA", "RGB")],
)
def test_netpbm_and_tga_photos_load(tmp_path, name, pillow_format, mode):
    path = tmp_path / name
    colour = {"L": 200, "RGB": RED, "1": 1}[mode]
    Image.new(mode, (30, 20), colour).save(path, pillow_format)
    assert _pillow_says(path, "format") == pillow_format

    array = load_image(path)

    _assert_rgb(array, 20, 30)
    expected = {"L": (200, 200, 200), "RGB": RED, "1": WHITE}[mode]
    _assert_color(array[10, 15], expected, tolerance=0)


def test_16_bit_pgm_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "scan.pgm"
    Image.fromarray(np.full((20, 30), 32768, np.uint16)).save(path, "PPM")

    _assert_color(load_image(path)[10, 15], (128, 128, 128), tolerance=0)


def test_a_photo_without_a_suffix_loads(tmp_path):
    path = tmp_path / "IMG_0001"
    Image.new("RGB", (30, 30), BLUE).save(path, "JPEG")

    _assert_color(load_image(path)[15, 15], BLUE, tolerance=4)


def test_heic_photo_loads_when_pillow_heif_is_installed(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    path = tmp_path / "IMG_0002.HEIC"
    heif = pillow_heif.from_bytes(mode="RGB", size=(32, 24), data=bytes(RED) * (32 * 24))
    try:
        heif.save(path, quality=95)
    except Exception as exc:  # a wheel built without an HEVC encoder
        pytest.skip(f"pillow-heif cannot encode HEIC here: {exc}")

    array = load_image(path)

    _assert_rgb(array, 24, 32)
    _assert_color(array[12, 16], RED, tolerance=12)


def test_avif_photo_loads_when_pillow_reads_it(tmp_path):
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    path = tmp_path / "photo.avif"
    Image.new("RGB", (32, 24), BLUE).save(path, "AVIF", quality=95)

    _assert_color(load_image(path)[12, 16], BLUE, tolerance=12)


MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(4096)
TS_PACKET = b"\x47\x40\x00\x10" + bytes(184)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (MP4, "MP4/MOV"),
        (b"\x00\x00\x00\x14ftypqt  " + bytes(500), "MP4/MOV"),
        (b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(500), "AVI"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81" + bytes(500), "Matroska/WebM"),
        (TS_PACKET * 4, "MPEG-TS"),
        ((b"\x00\x00\x00\x00" + TS_PACKET) * 4, "MPEG-TS"),  # .m2ts: 4-byte time stamps
        (b"\x00\x00\x01\xba\x44" + bytes(500), "MPEG"),
    ],
)
def test_video_files_are_not_photos(tmp_path, data, kind):
    path = tmp_path / "clip.jpg"  # the suffix does not matter
    path.write_bytes(data)

    with pytest.raises(BadImageError) as caught:
        load_image(path)

    assert caught.value.code == "not_a_photo"
    assert caught.value.reason == f"video file ({kind})"
    # The same rules for uploads:
    with pytest.raises(BadImageError, match=r"video file"):
        load_image_bytes(data)


def test_pdf_is_not_a_photo(tmp_path):
    path = tmp_path / "scan.pdf"
    path.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n")

    with pytest.raises(BadImageError) as caught:
        load_image(path)

    assert (caught.value.code, caught.value.reason) == ("not_a_photo", "not an image: PDF document")


def test_text_without_a_suffix_is_not_an_image(tmp_path):
    path = tmp_path / "README"
    path.write_text("hello\n")

    with pytest.raises(BadImageError) as caught:
        load_image(path)

    assert caught.value.code == "not_an_image"
    assert caught.value.reason.startswith("not an image")


def test_heic_brands_are_not_mistaken_for_videos():
    for brand in (b"heic", b"mif1", b"avif"):
        assert images.sniff_non_photo(b"\x00\x00\x00\x18ftyp" + brand + bytes(20)) is None
    assert images.sniff_non_photo(b"\xff\xd8\xff\xe0" + bytes(20)) is None


def test_content_not_suffix_decides_the_format(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    Image.new("RGB", (30, 30), RED).save(path, "PNG")

    _assert_color(load_image(path)[15, 15], RED, tolerance=0)


def test_mode_that_cannot_be_converted_is_reported(tmp_path, monkeypatch):
    path = tmp_path / "gray.png"
    Image.new("L", (30, 30), 100).save(path)

    def refuse(self, *args, **kwargs):
        raise ValueError(f"conversion from {self.mode} to RGB not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)

    assert _code(path) == "unsupported_mode"


# --- good files in every shape --------------------------------------------------------


def test_rgb_jpeg_is_a_writable_contiguous_uint8_array(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (200, 100, 50)).save(path, quality=95)

    array = load_image(path)

    _assert_rgb(array, 48, 64)
    assert array.flags.writeable
    _assert_color(array[24, 32], (200, 100, 50), tolerance=3)


def test_grayscale_jpeg_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "gray.jpg"
    Image.new("L", (40, 30), 90).save(path)
    assert _pillow_says(path, "mode") == "L"

    array = load_image(path)

    _assert_rgb(array, 30, 40)
    _assert_color(array[15, 20], (90, 90, 90))


def test_cmyk_jpeg_comes_out_in_the_right_colours(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(path, quality=95)
    assert _pillow_says(path, "mode") == "CMYK"

    array = load_image(path)

    _assert_rgb(array, 40, 40)
    _assert_color(array[20, 20], RED, tolerance=3)


@pytest.mark.parametrize(
    ("mode", "clear", "opaque", "half_black", "opaque_rgb"),
    [
        ("RGBA", (0, 0, 0, 0), (30, 20, 10, 255), (0, 0, 0, 128), (30, 20, 10)),
        ("LA", (0, 0), (30, 255), (0, 128), (30, 30, 30)),
    ],
)
def test_transparency_is_composited_onto_white(
    tmp_path, mode, clear, opaque, half_black, opaque_rgb
):
    image = Image.new(mode, (40, 40), clear)
    image.paste(opaque, (20, 0, 40, 20))
    image.paste(half_black, (20, 20, 40, 40))
    path = tmp_path / "cutout.png"
    image.save(path)

    array = load_image(path)

    _assert_rgb(array, 40, 40)
    _assert_color(array[10, 10], WHITE, tolerance=0)
    _assert_color(array[10, 30], opaque_rgb, tolerance=0)
    _assert_color(array[30, 30], (127, 127, 127), tolerance=1)


@pytest.mark.parametrize(
    ("image_format", "dtype", "expected_mode"),
    [("PNG", "<u2", "I;16"), ("TIFF", ">u2", "I;16B")],
)
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, image_format, dtype, expected_mode):
    values = np.repeat(np.array([0, 257, 32768, 65535], dtype=dtype), 6)
    path = tmp_path / f"scan.{image_format.lower()}"
    Image.fromarray(np.tile(values, (24, 1))).save(path, image_format)
    assert _pillow_says(path, "mode") == expected_mode

    array = load_image(path)

    _assert_rgb(array, 24, 24)
    assert array[0, ::6, 0].tolist() == [0, 1, 128, 255]
    assert (array == array[..., :1]).all()


@pytest.mark.parametrize(
    ("transparency", "left"),
    [(None, (0, 0, 0)), (0, WHITE), (b"\x00\xff", WHITE)],
    ids=["opaque", "transparent-index", "alpha-table"],
)
def test_palette_png(tmp_path, transparency, left):
    image = Image.new("P", (30, 30), 0)
    image.putpalette([0, 0, 0, 20, 200, 20])
    image.paste(1, (15, 0, 30, 30))
    path = tmp_path / "palette.png"
    image.save(path, **({} if transparency is None else {"transparency": transparency}))
    assert _pillow_says(path, "mode") == "P"
    assert ("transparency" in _pillow_says(path, "info")) == (transparency is not None)

    array = load_image(path)

    _assert_rgb(array, 30, 30)
    _assert_color(array[15, 5], left, tolerance=0)
    _assert_color(array[15, 25], (20, 200, 20), tolerance=0)


@pytest.mark.parametrize(
    ("orientation", "red_at", "blue_at"),
    # Stored 40 wide x 20 high with a red top-left quadrant. Orientation 6 turns
    # it clockwise (red ends top right), 8 counter-clockwise (red bottom left).
    [(6, (5, 15), [(5, 5), (30, 5), (30, 15)]), (8, (30, 5), [(5, 5), (5, 15), (30, 15)])],
)
def test_exif_orientation_is_applied(tmp_path, orientation, red_at, blue_at):
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif, quality=95)

    array = load_image(path)

    _assert_rgb(array, 40, 20)
    _assert_color(array[red_at], RED, tolerance=40)
    for position in blue_at:
        _assert_color(array[position], BLUE, tolerance=40)


def test_broken_exif_keeps_the_pixels(tmp_path, monkeypatch, caplog):
    path = tmp_path / "odd_metadata.jpg"
    Image.new("RGB", (40, 20), RED).save(path)

    def broken(*args, **kwargs):
        raise SyntaxError("not a TIFF IFD")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)

    array = load_image(path)

    _assert_rgb(array, 20, 40)
    assert "EXIF" in caplog.text


def test_animated_gif_gives_its_first_frame(tmp_path):
    path = tmp_path / "wave.gif"
    first, second = Image.new("RGB", (30, 24), RED), Image.new("RGB", (30, 24), BLUE)
    first.save(path, save_all=True, append_images=[second], duration=100)
    assert _pillow_says(path, "n_frames") == 2

    array = load_image(path)

    _assert_rgb(array, 24, 30)
    assert (array == RED).all()


@pytest.mark.parametrize(
    ("mode", "fill", "expected"),
    [
        ("1", 1, WHITE),
        ("L", 100, (100, 100, 100)),
        ("LA", (100, 255), (100, 100, 100)),
        ("RGB", (10, 20, 30), (10, 20, 30)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("CMYK", (0, 255, 255, 0), RED),
        ("YCbCr", (128, 128, 128), (128, 128, 128)),
        ("LAB", (255, 128, 128), WHITE),
        ("I", 1 << 30, (128, 128, 128)),  # signed 32-bit: half of 2**31 - 1
        ("I;16", 32768, (128, 128, 128)),
        ("I;16B", 65535, WHITE),
        ("F", 0.5, (128, 128, 128)),  # floats within 0..1
        ("F", 200.0, (200, 200, 200)),  # floats beyond 1 are taken as 0..255
    ],
)
def test_every_tiff_pixel_mode_converts_to_rgb(tmp_path, mode, fill, expected):
    path = tmp_path / "scan.tif"
    Image.new(mode, (24, 24), fill).save(path)
    assert _pillow_says(path, "mode") == mode

    array = load_image(path)

    _assert_rgb(array, 24, 24)
    _assert_color(array[12, 12], expected, tolerance=2)


def test_premultiplied_gray_alpha_tiff_is_composited_onto_white(tmp_path):
    buffer = io.BytesIO()
    Image.new("LA", (24, 24), (100, 128)).save(buffer, "TIFF")
    path = tmp_path / "premultiplied.tif"
    path.write_bytes(_mark_alpha_premultiplied(buffer.getvalue()))
    assert _pillow_says(path, "mode") == "La"

    array = load_image(path)

    # Stored 100 is already multiplied by alpha: 100 + 255 * (1 - 128 / 255) = 227.
    _assert_color(array[12, 12], (227, 227, 227), tolerance=2)


def _mark_alpha_premultiplied(tiff: bytes) -> bytes:
    # Pillow cannot write premultiplied ("La") TIFFs, so flip the ExtraSamples
    # tag of a straight-alpha one from 2 (unassociated) to 1 (associated).
    data = bytearray(tiff)
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, _type, _count = struct.unpack_from("<HHI", data, entry)
        if tag == 338:
            struct.pack_into("<H", data, entry + 8, 1)
            return bytes(data)
    raise AssertionError("no ExtraSamples tag")


# --- in-memory bytes ------------------------------------------------------------------


def test_load_image_bytes_matches_load_image(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (30, 20), (1, 2, 3)).save(path)

    array = load_image_bytes(path.read_bytes())

    _assert_rgb(array, 20, 30)
    assert np.array_equal(array, load_image(path))


@pytest.mark.parametrize("name", BAD_IMAGE_NAMES)
def test_load_image_bytes_reports_bytes_as_the_path(bad_images, name):
    directory, expected = bad_images

    with pytest.raises(BadImageError) as caught:
        load_image_bytes((directory / name).read_bytes())

    assert caught.value.code == expected[name]
    assert caught.value.path == "<bytes>"


# --- walking folders ------------------------------------------------------------------


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_walk_is_sorted_recursive_and_skips_only_hidden_files(tmp_path):
    _touch(
        tmp_path,
        "sub/c.jpeg",
        "b.JPG",
        "a.png",
        "Album/e.gif",
        ".DS_Store",
        "notes.txt",
        "._a.png",
        ".thumbnails/t.jpg",
        "sub/scan.TIFF",
        "sub/movie.mp4",
        "sub/face.pgm",
        "IMG_0001",
    )

    found = list(iter_image_files(tmp_path))

    # Every non-hidden file, whatever its suffix: the loader decides by content.
    assert found == [
        (tmp_path / "Album/e.gif", None),
        (tmp_path / "IMG_0001", None),
        (tmp_path / "a.png", None),
        (tmp_path / "b.JPG", None),
        (tmp_path / "notes.txt", None),
        (tmp_path / "sub/c.jpeg", None),
        (tmp_path / "sub/face.pgm", None),
        (tmp_path / "sub/movie.mp4", None),
        (tmp_path / "sub/scan.TIFF", None),
    ]


def test_walk_reports_an_unlistable_folder_and_keeps_going(tmp_path, monkeypatch):
    _touch(tmp_path, "a.jpg", "locked/hidden_from_us.jpg", "z.jpg")
    locked = tmp_path / "locked"
    real_scandir = os.scandir

    def scandir_unless_locked(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_unless_locked)

    found = list(iter_image_files(tmp_path))

    assert [path for path, _ in found] == [tmp_path / "a.jpg", locked, tmp_path / "z.jpg"]
    error = found[1][1]
    assert isinstance(error, BadImageError)
    assert (error.path, error.code) == (locked, "unreadable")
    assert "Permission denied" in error.reason
    assert found[0][1] is None and found[2][1] is None


@pytest.mark.skipif(IS_ROOT, reason="root lists folders whatever their permissions")
def test_walk_survives_a_folder_without_permissions(tmp_path):
    _touch(tmp_path, "a.jpg", "locked/x.jpg")
    locked = tmp_path / "locked"
    locked.chmod(0)
    try:
        found = list(iter_image_files(tmp_path))
    finally:
        locked.chmod(0o700)

    assert found[0] == (tmp_path / "a.jpg", None)
    assert found[1][0] == locked and found[1][1].code == "unreadable"


def test_walk_follows_folder_links_once_and_flags_broken_links(tmp_path):
    _touch(tmp_path, "a.jpg")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "back_to_root").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")

    found = list(iter_image_files(tmp_path))

    assert [(path, error and error.code) for path, error in found] == [
        (tmp_path / "a.jpg", None),
        (tmp_path / "gone.jpg", "unreadable"),
    ]


def test_walk_rejects_a_root_that_is_not_a_folder(tmp_path):
    with pytest.raises(NotADirectoryError):
        iter_image_files(tmp_path / "missing")


# --- hashing --------------------------------------------------------------------------


def test_file_sha256_hashes_the_content(tmp_path):
    content = np.random.default_rng(1).bytes(3_000_000)
    path = tmp_path / "big.jpg"
    path.write_bytes(content)
    (tmp_path / "same.jpg").write_bytes(content)

    digest = file_sha256(path)

    assert digest == hashlib.sha256(content).hexdigest()
    assert file_sha256(tmp_path / "same.jpg") == digest


def test_file_sha256_of_a_missing_file_is_unreadable(tmp_path):
    with pytest.raises(BadImageError) as caught:
        file_sha256(tmp_path / "missing.jpg")
    assert caught.value.code == "unreadable"
