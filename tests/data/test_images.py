from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_classification import config
from image_classification.data import images
from image_classification.data.images import ImageSpec, decode_image

GRAY_28 = ImageSpec(28, 28, 1)


def encode(image: Image.Image, file_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=file_format, **options)
    return buffer.getvalue()


def gradient(width: int = 20, height: int = 10) -> np.ndarray:
    return (np.arange(width * height).reshape(height, width) % 251).astype(np.uint8)


@pytest.mark.parametrize("file_format", ["PNG", "BMP", "GIF", "WEBP"])
def test_lossless_formats_roundtrip_exactly(file_format: str) -> None:
    pixels = gradient(28, 28)
    options = {"lossless": True} if file_format == "WEBP" else {}
    decoded = decode_image(encode(Image.fromarray(pixels), file_format, **options), GRAY_28)
    assert decoded.shape == (28, 28, 1)
    assert decoded.dtype == np.uint8
    assert np.array_equal(decoded[:, :, 0], pixels)


def test_jpeg_decodes_close_to_the_original() -> None:
    pixels = np.full((28, 28), 128, np.uint8)
    decoded = decode_image(encode(Image.fromarray(pixels), "JPEG", quality=95), GRAY_28)
    assert np.abs(decoded.astype(int) - 128).max() <= 2


def test_rgb_to_gray_and_gray_to_rgb() -> None:
    red = np.zeros((28, 28, 3), np.uint8)
    red[..., 0] = 255
    gray = decode_image(encode(Image.fromarray(red), "PNG"), GRAY_28)
    assert np.all(gray == 76)  # ITU-R 601-2 luma: 255 * 299 / 1000
    rgb = decode_image(encode(Image.fromarray(gradient(28, 28)), "PNG"), ImageSpec(28, 28, 3))
    assert rgb.shape == (28, 28, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_transparency_is_composited_over_black() -> None:
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only the left half is opaque
    rgba[:, :14, 3] = 255
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), ImageSpec(28, 28, 3))
    assert np.all(decoded[:, :14] == 255)
    assert np.all(decoded[:, 14:] == 0)
    palette = Image.fromarray(np.repeat([[0, 1]], 28, axis=0).repeat(14, axis=1).astype(np.uint8), "P")
    palette.putpalette([255, 255, 255, 200, 200, 200])
    decoded = decode_image(encode(palette, "PNG", transparency=1), GRAY_28)
    assert np.all(decoded[:, :14] == 255)
    assert np.all(decoded[:, 14:] == 0)


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    pixels = np.full((28, 28), 65535 // 2, np.uint16)
    decoded = decode_image(encode(Image.fromarray(pixels), "PNG"), GRAY_28)
    assert np.all(decoded == 127)


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.fromarray(np.full((28, 28), value, np.uint8)) for value in (10, 200)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert np.all(decode_image(data, GRAY_28) == 10)


def test_stretch_crop_and_pad() -> None:
    wide = np.zeros((10, 40), np.uint8)
    wide[:, 15:25] = 255  # a bright square in the middle of a wide image
    data = encode(Image.fromarray(wide), "PNG")
    stretched = decode_image(data, ImageSpec(10, 10, 1, "nearest", "stretch"))[:, :, 0]
    cropped = decode_image(data, ImageSpec(10, 10, 1, "nearest", "crop"))[:, :, 0]
    padded = decode_image(data, ImageSpec(40, 40, 1, "nearest", "pad"))[:, :, 0]
    assert np.array_equal(stretched[0], [0, 0, 0, 0, 255, 255, 0, 0, 0, 0])  # squeezed 4x
    assert np.all(cropped == 255)  # the centre 10x10 is the square
    assert np.all(padded[:15] == 0)  # black bands above and below
    assert np.all(padded[25:] == 0)
    assert np.array_equal(padded[20], wide[5])


def test_interpolation_matters_only_when_resizing() -> None:
    data = encode(Image.fromarray(gradient(20, 10)), "PNG")
    nearest = decode_image(data, ImageSpec(5, 10, 1, "nearest"))
    bilinear = decode_image(data, ImageSpec(5, 10, 1, "bilinear"))
    assert nearest.shape == bilinear.shape == (5, 10, 1)
    assert not np.array_equal(nearest, bilinear)
    same_size = [decode_image(data, ImageSpec(10, 20, 1, name)) for name in config.INTERPOLATIONS]
    assert all(np.array_equal(array[:, :, 0], gradient(20, 10)) for array in same_size)


def test_reads_a_path_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    path = tmp_path / "chat noir é.png"
    path.write_bytes(encode(Image.fromarray(gradient(28, 28)), "PNG"))
    assert np.array_equal(decode_image(path, GRAY_28)[:, :, 0], gradient(28, 28))


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header is rewritten to claim `width` x `height` (with a correct CRC)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a picture\n", "content is none of PNG, JPEG, BMP, GIF, WEBP"),
        (encode(Image.fromarray(gradient(28, 28)), "PNG")[:60], "not a readable image"),
        (encode(Image.fromarray(gradient(28, 28)), "TIFF"), "content is none of"),
        (png_claiming(9000, 9000), r"9000x9000 pixels exceeds the 67,108,864-pixel limit"),
        (png_claiming(100_000, 100_000), "decompression bomb"),
    ],
    ids=["empty", "text", "truncated", "tiff", "bomb-over-our-limit", "bomb-over-pillow-limit"],
)
def test_bad_data_is_a_clear_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_image(data, GRAY_28)


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(Image.fromarray(gradient(100, 100)), "PNG")
    assert decode_image(data, ImageSpec(4, 4, 1, max_pixels=10_000)).shape == (4, 4, 1)
    with pytest.raises(ValueError, match="100x100 pixels exceeds the 9,999-pixel limit"):
        decode_image(data, ImageSpec(4, 4, 1, max_pixels=9_999))


def test_missing_file_is_a_clear_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read file"):
        decode_image(tmp_path / "nope.png", GRAY_28)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [((0, 28, 1), "must be positive"), ((28, 28, 2), "channels must be 1 or 3"),
     ((28, 28, 1, "cubic"), "interpolation must be one of"), ((28, 28, 1, "bilinear", "fit"), "aspect must be")],
)  # fmt: skip
def test_image_spec_rejects_bad_settings(arguments: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageSpec(*arguments)


def test_every_interpolation_the_params_allow_has_a_filter() -> None:
    assert set(images.RESAMPLING_FILTERS) == set(config.INTERPOLATIONS)
