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


def test_transparency_is_composited_over_the_background_param() -> None:
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only the left half is opaque
    rgba[:, :14, 3] = 255
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), ImageSpec(28, 28, 3, background="black"))
    assert np.all(decoded[:, :14] == 255)
    assert np.all(decoded[:, 14:] == 0)
    palette = Image.fromarray(np.repeat([[0, 1]], 28, axis=0).repeat(14, axis=1).astype(np.uint8), "P")
    palette.putpalette([255, 255, 255, 200, 200, 200])
    decoded = decode_image(encode(palette, "PNG", transparency=1), ImageSpec(28, 28, 1, background="black"))
    assert np.all(decoded[:, :14] == 255)
    assert np.all(decoded[:, 14:] == 0)


def test_dark_shape_on_transparent_keeps_its_shape_on_the_default_white() -> None:
    # What icon sets and exported masks look like: an opaque black shape, the rest fully transparent
    # (and black underneath, so dropping alpha or compositing over black gives a flat black square).
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[8:20, 8:20, 3] = 255
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), GRAY_28)[:, :, 0]
    assert np.all(decoded[8:20, 8:20] == 0)
    assert np.all(decoded[:8] == 255)
    la = np.zeros((28, 28, 2), np.uint8)
    la[8:20, 8:20, 1] = 255
    assert np.array_equal(decode_image(encode(Image.fromarray(la, "LA"), "PNG"), GRAY_28)[:, :, 0], decoded)


@pytest.mark.parametrize(("orientation", "turn"), [(3, 2), (6, 1), (8, 3)])
@pytest.mark.parametrize("file_format", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_is_applied_as_viewers_do(orientation: int, turn: int, file_format: str) -> None:
    # Upright: 16 high, 8 wide, the top half white. A phone stores it turned and tags the turn.
    upright = np.zeros((16, 8), np.uint8)
    upright[:8] = 255
    stored = np.rot90(upright, k=turn)  # what is on disk; Orientation says how to turn it back
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(np.ascontiguousarray(stored)), file_format, exif=exif.tobytes())
    decoded = decode_image(data, ImageSpec(16, 8, 1, "nearest"))[:, :, 0].astype(int)
    assert abs(decoded - upright.astype(int)).max() <= 40, decoded  # JPEG blurs the edge a little


def swapped_primaries_profile() -> bytes:
    """An RGB ICC profile like sRGB but with the red and blue primaries swapped: easy to recognise."""
    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    tags = {}
    for index in range(struct.unpack(">I", data[128:132])[0]):
        signature, offset, size = struct.unpack(">4sII", data[132 + 12 * index : 144 + 12 * index])
        tags[signature] = (offset, size)
    (red, red_size), (blue, blue_size) = tags[b"rXYZ"], tags[b"bXYZ"]
    red_tag, blue_tag = bytes(data[red : red + red_size]), bytes(data[blue : blue + blue_size])
    data[red : red + red_size], data[blue : blue + blue_size] = blue_tag, red_tag
    return bytes(data)


def test_embedded_icc_profile_is_converted_to_srgb() -> None:
    from PIL import ImageCms

    pixels = np.full((4, 4, 3), (200, 100, 50), np.uint8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged = decode_image(encode(Image.fromarray(pixels), "PNG", icc_profile=srgb), ImageSpec(4, 4, 3))
    assert np.array_equal(tagged, pixels)  # sRGB to sRGB changes nothing
    for file_format in ("PNG", "JPEG", "TIFF"):
        data = encode(Image.fromarray(pixels), file_format, icc_profile=swapped_primaries_profile())
        red, green, blue = decode_image(data, ImageSpec(4, 4, 3))[0, 0].astype(int)
        assert (abs(red - 50), abs(green - 100), abs(blue - 200)) <= (4, 4, 4), file_format
    broken = decode_image(encode(Image.fromarray(pixels), "PNG", icc_profile=b"not a profile"), ImageSpec(4, 4, 3))
    assert np.array_equal(broken, pixels)  # ignored, as viewers ignore it


@pytest.mark.parametrize("file_format", ["TIFF", "HEIF", "AVIF", "JPEG2000", "PPM"])
def test_photo_formats_beyond_the_web_ones_decode(file_format: str) -> None:
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:8] = (250, 250, 250)
    decoded = decode_image(encode(Image.fromarray(pixels), file_format), ImageSpec(16, 16, 3)).astype(int)
    assert abs(decoded - pixels.astype(int)).max() <= 48, file_format  # HEIF and AVIF are lossy


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("drawing.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG is a vector format; render it to PNG"),
        ("IMG_0001.CR2", b"II*\x00" + b"\0" * 64, "a camera raw file; export it to JPEG or PNG"),
        ("photo.jxl", b"\xff\x0a" + b"\0" * 64, "JPEG XL is not supported"),
        ("layers.psd", b"8BPS" + b"\0" * 64, "a Photoshop document; export it to PNG"),
        ("renamed.png", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG content, which is not supported"),
        ("renamed.jpg", b"\xff\x0a" + b"\0" * 64, "JPEG XL content, which is not supported"),
    ],
)
def test_image_formats_it_cannot_read_are_refused_with_what_to_do(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        decode_image(path, GRAY_28)


def test_bytes_are_refused_by_the_name_they_came_with(tmp_path: Path) -> None:
    data = encode(Image.fromarray(gradient(28, 28)), "TIFF")  # what a camera raw file holds, and decodable
    assert np.array_equal(decode_image(data, GRAY_28)[:, :, 0], gradient(28, 28))
    assert np.array_equal(decode_image(data, GRAY_28, name="scan.tif"), decode_image(data, GRAY_28))
    with pytest.raises(ValueError, match=r"^a camera raw file; export it to JPEG or PNG"):
        decode_image(data, GRAY_28, name="folder/IMG_0001.CR2")
    (tmp_path / "IMG_0001.CR2").write_bytes(data)
    with pytest.raises(ValueError, match=r"^a camera raw file"):  # a path names itself; `name` is for bytes
        decode_image(tmp_path / "IMG_0001.CR2", GRAY_28, name="scan.tif")


def test_files_are_images_by_name_or_by_content(tmp_path: Path) -> None:
    (tmp_path / "IMG_0001").write_bytes(encode(Image.fromarray(gradient()), "JPEG"))
    (tmp_path / "scan.dat").write_bytes(encode(Image.fromarray(gradient()), "PNG"))
    (tmp_path / "notes.txt").write_text("not an image")
    assert images.looks_like_image(tmp_path / "IMG_0001")
    assert images.looks_like_image(tmp_path / "scan.dat")
    assert not images.looks_like_image(tmp_path / "notes.txt")
    assert images.named_like_image("photo.HEIC")
    assert images.named_like_image("raw.nef")
    assert not images.named_like_image("notes.txt")


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
        (b"8BPS" + bytes(64), "Photoshop content, which is not supported; convert it to PNG or JPEG"),
        (png_claiming(9000, 9000), r"9000x9000 pixels exceeds the 67,108,864-pixel limit"),
        (png_claiming(100_000, 100_000), "decompression bomb"),
    ],
    ids=["empty", "text", "truncated", "psd", "bomb-over-our-limit", "bomb-over-pillow-limit"],
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
