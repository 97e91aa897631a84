"""Decode one image file into a uint8 array of a fixed size: the single rule every image goes through.

The rules, which docs/data.md repeats for users:

- Formats: `FORMATS` (PNG, JPEG, BMP, GIF's first frame, WebP, TIFF, AVIF, HEIC/HEIF, JPEG 2000,
  Netpbm), recognized by their content, not their name. Files named like images of other formats
  (`UNSUPPORTED_SUFFIXES`: camera raw, SVG, PSD, JPEG XL, ...) are rejected with the reason.
- Size: an image whose header claims more than `ImageSpec.max_pixels` pixels is refused before any
  pixel is decoded, so a decompression bomb never allocates its memory.
- Orientation: the EXIF Orientation tag is applied, as every viewer does (phones store portrait
  photos as landscape pixels with Orientation 6 or 8).
- Colour: an embedded ICC profile is converted to sRGB (phones shoot in Display P3, cameras in
  Adobe RGB); images without one are taken as sRGB.
- Transparency (RGBA, LA, palette images with a transparent colour) is composited over
  `ImageSpec.background`: white (what viewers show, and what keeps dark shapes on a transparent
  background) or black (for light shapes).
- Channels: 1 gives luminance (ITU-R 601-2, Pillow's `L`); 3 gives RGB (grayscale is repeated).
  16-bit grayscale is scaled to 8 bits.
- Size: `stretch` resizes to height x width ignoring the aspect ratio (Keras'
  `image_dataset_from_directory` default); `crop` cuts the largest centred region of the target aspect
  ratio, then resizes; `pad` resizes to fit inside and centres the image on black. The interpolation
  is one of `config.INTERPOLATIONS`; an image already at the target size is not resampled.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps

from image_classification import config

# Pillow's names of the formats decoded; HEIF (HEIC and AVIF-in-HEIF photos) comes from pillow-heif.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "AVIF", "HEIF", "JPEG2000", "PPM")
# File names taken as images; a file of another name is one too when its first bytes say so.
IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".webp", ".tif", ".tiff", ".avif",
    ".heic", ".heif", ".hif", ".jp2", ".j2k", ".jpf", ".jpx", ".pbm", ".pgm", ".ppm", ".pnm",
)  # fmt: skip
_RAW_SUFFIXES = (
    ".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".pef", ".srw", ".x3f",
    ".raw", ".3fr", ".erf", ".kdc",
)  # fmt: skip
_RAW = "a camera raw file; export it to JPEG or PNG with the camera's software, darktable or dcraw"
# Image formats this decoder does not read, with what to do about them. Files named so are rejected
# with the reason, never silently ignored.
UNSUPPORTED_SUFFIXES = {
    ".svg": "SVG is a vector format; render it to PNG (for example with rsvg-convert)",
    ".svgz": "SVG is a vector format; render it to PNG (for example with rsvg-convert)",
    ".psd": "a Photoshop document; export it to PNG",
    ".xcf": "a GIMP document; export it to PNG",
    ".jxl": "JPEG XL is not supported; convert it to PNG or JPEG (for example with djxl)",
    ".ico": "an icon file; convert it to PNG",
    ".icns": "an icon file; convert it to PNG",
    ".tga": "TGA is not supported; convert it to PNG",
    ".exr": "OpenEXR (high dynamic range) is not supported; tone-map it to PNG",
    ".hdr": "Radiance HDR is not supported; tone-map it to PNG",
    ".dds": "DDS textures are not supported; convert them to PNG",
    ".eps": "EPS is a vector format; render it to PNG",
    **dict.fromkeys(_RAW_SUFFIXES, _RAW),
}
# Pillow's filter for each of `config.INTERPOLATIONS`; a test checks that both name the same choices.
RESAMPLING_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
# 64 megapixels: a 9000 x 7000 photo passes, and decoding it as RGB needs about 200 MB.
MAX_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class ImageSpec:
    """What every decoded image becomes: `height` x `width` x `channels` uint8."""

    height: int
    width: int
    channels: int
    interpolation: str = "bilinear"
    aspect: str = "stretch"
    background: str = "white"
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.interpolation not in config.INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {list(config.INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.aspect not in config.ASPECTS:
            raise ValueError(f"aspect must be one of {list(config.ASPECTS)}, got {self.aspect!r}")
        if self.background not in config.BACKGROUNDS:
            raise ValueError(f"background must be one of {list(config.BACKGROUNDS)}, got {self.background!r}")


def decode_image(source: bytes | str | os.PathLike, spec: ImageSpec, name: str | None = None) -> np.ndarray:
    """Decode an image file's bytes (or the file at a path) into a `spec.height x spec.width x spec.channels` array.

    Args:
        source: the encoded file contents, or the path of the file.
        spec: target size, channels, interpolation and aspect rule.
        name: the file's name when `source` is its contents, for the formats refused by name.

    Returns:
        A C-contiguous uint8 array of shape (height, width, channels).

    Raises:
        ValueError: the file is named as a format of `UNSUPPORTED_SUFFIXES`, or the data is empty,
            truncated, not one of `FORMATS`, or claims more than `spec.max_pixels` pixels. The
            message says which, and what to do.
    """
    _register_heif()
    named = name if isinstance(source, bytes) else os.fspath(source)
    reason = UNSUPPORTED_SUFFIXES.get(suffix(named)) if named else None
    if reason:
        raise ValueError(reason)
    data = source if isinstance(source, bytes) else _read(Path(source))
    if not data:
        raise ValueError("empty file (0 bytes)")
    # Pillow's format plugins raise many exception types on corrupt data (OSError, SyntaxError,
    # struct.error, IndexError, ...); all of them mean "not a readable image" here.
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; the explicit check below refuses those images anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        with image:
            pixels = image.width * image.height
            if pixels > spec.max_pixels:
                raise _TooLarge(f"{image.width}x{image.height} pixels")
            image.seek(0)
            if image.format == "JPEG":
                # Let libjpeg decode at a reduced scale: large photos shrink to a few times the target.
                image.draft("RGB" if spec.channels == 3 else "L", (spec.width, spec.height))
            image.load()
            converted = _convert(_to_srgb(_upright(image)), spec.channels, spec.background)
    except _TooLarge as error:
        raise ValueError(
            f"image of {error} exceeds the {spec.max_pixels:,}-pixel limit (possible decompression bomb); refused"
        ) from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"possible decompression bomb refused: {error}") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"not a readable image: {describe_content(data)}") from None
    except Exception as error:
        raise ValueError(f"not a readable image: {_reason(error)}") from None
    resized = _resize(converted, spec)
    array = np.asarray(resized, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    return np.ascontiguousarray(array)


class _TooLarge(Exception):
    pass


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read file: {error.strerror or error}") from None


def _reason(error: Exception) -> str:
    text = str(error).strip() or "corrupt data"
    return f"{text} ({type(error).__name__})" if not isinstance(error, OSError) else text


# First bytes of the formats `FORMATS` holds, and of image formats it does not (rejected with a reason).
# First bytes of image formats `FORMATS` does not hold (rejected with what to do), and of the ones it does.
_UNSUPPORTED_SIGNATURES = {
    b"\xff\x0a": "JPEG XL", b"\x00\x00\x00\x0cJXL ": "JPEG XL", b"8BPS": "Photoshop",
}  # fmt: skip
_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x0cjP  ",
    b"\xff\x4f\xff\x51", *_UNSUPPORTED_SIGNATURES,
)  # fmt: skip
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def suffix(name: str) -> str:
    """The lower-case suffix of a file name or "/"-separated path: `os.path.splitext(name)[1].lower()`.

    Written out because it runs once per file of folders of a million files, where `splitext` costs
    a few microseconds a call.
    """
    start = name.rfind("/") + 1
    dot = name.rfind(".")
    # As in splitext, the leading dots of a name (".png", "..png") do not start a suffix.
    if dot <= start or (name[start] == "." and not name[start:dot].lstrip(".")):
        return ""
    return name[dot:].lower()


def named_like_image(name: str) -> bool:
    """Whether a file name has the suffix of an image format, supported or not."""
    found = suffix(name)
    return found in IMAGE_SUFFIXES or found in UNSUPPORTED_SUFFIXES


def looks_like_image(path: Path) -> bool:
    """Whether a file's first bytes are those of an image format, whatever its name (`IMG_0042`, `scan.dat`)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(32)
    except OSError:
        return False
    if head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return True
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def describe_content(data: bytes) -> str:
    """Say what a file that no decoder took holds, naming the format when its first bytes tell it."""
    head = data[:32]
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "a HEIF/AVIF file the decoder could not read"
    for signature, name in (
        *_UNSUPPORTED_SIGNATURES.items(),
        (b"<svg", "SVG"),
        (b"<?xml", "XML (SVG?)"),
        (b"%PDF", "PDF"),
        (b"%!PS", "PostScript"),
    ):
        if head.startswith(signature):
            return f"{name} content, which is not supported; convert it to PNG or JPEG"
    return f"the content is none of {', '.join(FORMATS)}"


@functools.cache
def _register_heif() -> None:
    """Teach Pillow to open HEIC/HEIF photos (what iPhones save), once per process."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF Orientation tag, so the pixels stand as every viewer shows them."""
    if image.getexif().get(0x0112, 1) in (1, None):
        return image
    return ImageOps.exif_transpose(image)


def _to_srgb(image: Image.Image) -> Image.Image:
    """Convert an image with an embedded ICC profile to sRGB, as colour-managed viewers do.

    Only RGB(A) and CMYK images are converted; a profile LittleCMS cannot read is ignored, as
    viewers ignore it.
    """
    profile = image.info.get("icc_profile")
    if not profile or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    try:
        transform = _srgb_transform(hashlib.sha256(profile).hexdigest(), profile, image.mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image
    return ImageCms.applyTransform(image, transform)


@functools.lru_cache(maxsize=32)
def _srgb_transform(key: str, profile: bytes, mode: str) -> ImageCms.ImageCmsTransform:
    # Building a transform costs milliseconds; a folder of photos from one phone shares one profile.
    output_mode = "RGBA" if mode == "RGBA" else "RGB"
    return ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(profile)), ImageCms.createProfile("sRGB"), mode, output_mode
    )


def _convert(image: Image.Image, channels: int, background: str) -> Image.Image:
    """Bring any Pillow mode to L or RGB, compositing transparency over `background`."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # Pillow would clip 16-bit values at 255 instead of scaling them.
        wide = np.asarray(image, dtype=np.float64)
        scale = 1.0 if image.mode == "F" else 257.0
        image = Image.fromarray(np.clip(np.rint(wide / scale), 0, 255).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        fill = (255, 255, 255, 255) if background == "white" else (0, 0, 0, 255)
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, fill), rgba)
    return image.convert("L" if channels == 1 else "RGB")


def _resize(image: Image.Image, spec: ImageSpec) -> Image.Image:
    size = (spec.width, spec.height)
    if image.size == size:
        return image
    method = RESAMPLING_FILTERS[spec.interpolation]
    if spec.aspect == "crop":
        return ImageOps.fit(image, size, method=method)
    if spec.aspect == "pad":
        return ImageOps.pad(image, size, method=method, color=0)
    return image.resize(size, resample=method)
