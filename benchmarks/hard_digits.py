"""A harder, larger data set for the speed benchmark: the embedded digits under strong random distortions.

The default recipe was first tuned on the 5,000 embedded digits, so its figures there say little about
other data. This builds a set it was not tuned on, as large as MNIST, in which no test image comes
from a digit that training saw:

1. The 5,000 digits are split by the project's own stratified split (`split.partition`).
2. Each part is grown to its share of `size` images, each drawn from that part's digits only and
   distorted independently: a random affine map (rotation up to 30 degrees, scale 0.75-1.15 per axis,
   shear up to 0.35, shift up to 4 pixels), an elastic deformation (Simard et al. 2003, "Best
   practices for convolutional neural networks applied to visual document analysis", alpha 34,
   sigma 4.5), thicker or thinner strokes in a third of the images, a faint fragment of another
   digit pasted in half of them as clutter, random contrast and Gaussian noise (sigma 18 of 255).

It is generated, not collected: use it for speed and for comparing recipes, not as a claim about
any real data set. The same `size` and `seed` give the same bytes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from image_classification.config import SplitParams
from image_classification.data import dataset as dataset_lib
from image_classification.data import sources, split
from image_classification.data.dataset import Dataset

DESCRIPTION = (
    "distorted digits: the embedded 5,000 digits split first, then each part grown by random affine maps "
    "(rotation up to 30 degrees, scale 0.75-1.15, shear 0.35, shift 4 px), elastic deformation, stroke "
    "width changes, clutter from other digits and noise; no test image comes from a digit training saw"
)


def build(size: int, split_params: SplitParams, seed: int = 0) -> tuple[dict[str, Dataset], dict[str, np.ndarray]]:
    """Generate `size` distorted digits, already split.

    Args:
        size: images in all three parts together; each part gets its fraction of them.
        split_params: the fractions and seed that split the 5,000 source digits.
        seed: seeds the distortions.

    Returns:
        "train", "validation" and "test" datasets of uint8 (n, 28, 28, 1) images and int64 labels, and
        for each part the rows of the embedded digits each of its images was made from.
    """
    digits = sources.load_embedded_digits()
    indices = split.partition(
        digits.labels, dataset_lib.content_hashes(digits.images), digits.class_names, split_params
    )
    fractions = {
        "validation": split_params.validation_fraction,
        "test": split_params.test_fraction,
    }
    fractions["train"] = 1.0 - sum(fractions.values())
    rng = np.random.default_rng(seed)
    parts, origins = {}, {}
    for name in split.SPLITS:
        part = digits.subset(getattr(indices, name))
        count = round(size * fractions[name])
        chosen = rng.integers(0, len(part), count)
        images = np.stack([distort(part.images[row, :, :, 0], part.images, rng) for row in chosen])
        parts[name] = Dataset(images[..., np.newaxis], part.labels[chosen], digits.class_names)
        origins[name] = np.asarray(getattr(indices, name))[chosen]
    return parts, origins


def distort(image: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random distortion of a (28, 28) uint8 digit; `pool` (n, 28, 28, 1) supplies the clutter."""
    side = image.shape[0]
    picture = image.astype(np.float32) / 255.0
    angle = np.deg2rad(rng.uniform(-30, 30))
    scale = rng.uniform(0.75, 1.15, 2)
    shear = rng.uniform(-0.35, 0.35)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(scale)
    inverse = np.linalg.inv(forward)
    centre = np.array([side / 2 - 0.5, side / 2 - 0.5])
    shift = rng.uniform(-4, 4, 2)
    offset = centre - inverse @ (centre + shift)
    picture = ndimage.affine_transform(picture, inverse, offset=offset, order=1, mode="constant")

    alpha, sigma = 34.0, 4.5
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    drow = ndimage.gaussian_filter(rng.uniform(-1, 1, (side, side)), sigma) * alpha
    dcol = ndimage.gaussian_filter(rng.uniform(-1, 1, (side, side)), sigma) * alpha
    picture = ndimage.map_coordinates(picture, [rows + drow, cols + dcol], order=1, mode="constant")

    stroke = rng.uniform()
    if stroke < 1 / 6:
        picture = ndimage.grey_dilation(picture, size=(2, 2))
    elif stroke < 1 / 3:
        picture = ndimage.grey_erosion(picture, size=(2, 2)) * 0.5 + picture * 0.5

    if rng.uniform() < 0.5:
        other = pool[rng.integers(0, len(pool)), :, :, 0].astype(np.float32) / 255.0
        top, left, height, width = *rng.integers(0, side // 2, 2), *rng.integers(8, 15, 2)
        patch = other[top : top + height, left : left + width]
        down, right = rng.integers(0, side - patch.shape[0] + 1), rng.integers(0, side - patch.shape[1] + 1)
        region = picture[down : down + patch.shape[0], right : right + patch.shape[1]]
        np.maximum(region, patch * rng.uniform(0.3, 0.6), out=region)

    picture = picture * rng.uniform(0.6, 1.0) + rng.normal(0.0, 18 / 255, picture.shape)
    return np.clip(np.rint(picture * 255), 0, 255).astype(np.uint8)
