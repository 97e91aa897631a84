"""Decode one image file into a uint8 array of a fixed size: the single rule every image goes through.

The rules, which docs/data.md repeats for users:

- Formats: PNG, JPEG, BMP, GIF (first frame) and WebP, recognized by their content, not their name.
- Size: an image whose header claims more than `ImageSpec.max_pixels` pixels is refused before any
  pixel is decoded, so a decompression bomb never allocates its memory.
- Transparency (RGBA, LA, palette images with a transparent colour) is composited over black.
- Channels: 1 gives luminance (ITU-R 601-2, Pillow's `L`); 3 gives RGB (grayscale is repeated).
  16-bit grayscale is scaled to 8 bits.
- Size: `stretch` resizes to height x width ignoring the aspect ratio (Keras'
  `image_dataset_from_directory` default); `crop` cuts the largest centred region of the target aspect
  ratio, then resizes; `pad` resizes to fit inside and centres the image on black. The interpolation
  is one of `config.INTERPOLATIONS`; an image already at the target size is not resampled.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from image_classification import config

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
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


def decode_image(source: bytes | str | os.PathLike, spec: ImageSpec) -> np.ndarray:
    """Decode an image file's bytes (or the file at a path) into a `spec.height x spec.width x spec.channels` array.

    Args:
        source: the encoded file contents, or the path of the file.
        spec: target size, channels, interpolation and aspect rule.

    Returns:
        A C-contiguous uint8 array of shape (height, width, channels).

    Raises:
        ValueError: the data is empty, truncated, not one of `FORMATS`, or claims more than
            `spec.max_pixels` pixels. The message says which.
    """
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
            converted = _convert(image, spec.channels)
    except _TooLarge as error:
        raise ValueError(
            f"image of {error} exceeds the {spec.max_pixels:,}-pixel limit (possible decompression bomb); refused"
        ) from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"possible decompression bomb refused: {error}") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"not a readable image: the content is none of {', '.join(FORMATS)}") from None
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


def _convert(image: Image.Image, channels: int) -> Image.Image:
    """Bring any Pillow mode to L or RGB, compositing transparency over black."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # Pillow would clip 16-bit values at 255 instead of scaling them.
        wide = np.asarray(image, dtype=np.float64)
        scale = 1.0 if image.mode == "F" else 257.0
        image = Image.fromarray(np.clip(np.rint(wide / scale), 0, 255).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
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
