"""Random input never produces an unhandled exception: a valid result or a clear ValueError."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from image_classification import config
from image_classification.config import Params, ParamsError, load_params, parse_params
from image_classification.data import dataset as dataset_lib
from image_classification.data import images, shards, split
from image_classification.data.dataset import Dataset
from tests.conftest import make_images, raw_params, write_shards

PROFILE = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@PROFILE
@given(
    section=st.sampled_from(["data", "split", "train", "evaluate", "export", "mlflow"]),
    key=st.text(max_size=20),
    value=values,
)
def test_any_single_edit_of_params_validates_or_fails_clearly(section: str, key: str, value) -> None:
    raw = raw_params()
    keys = list(raw[section])
    raw[section][keys[hash(key) % len(keys)] if key == "" else key] = value
    try:
        assert isinstance(parse_params(raw), Params)
    except ParamsError as error:
        assert str(error).startswith("params: ")


@PROFILE
@given(raw=st.dictionaries(st.text(max_size=10), values, max_size=6))
def test_arbitrary_mappings_validate_or_fail_clearly(raw: dict) -> None:
    try:
        parse_params(raw)
    except ParamsError as error:
        assert str(error)


@PROFILE
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda data: data.decode("latin-1"))))
def test_arbitrary_params_files_load_or_fail_clearly(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_params(path)
        except ParamsError as error:
            assert str(error).startswith(str(path))


@PROFILE
@given(
    name=st.sampled_from([shards.MANIFEST, "images-00000.npy", shards.LABELS, shards.HASHES]),
    data=st.binary(max_size=600),
)
def test_arbitrary_bytes_as_a_prepared_dataset_file_fail_clearly(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        prepared = write_shards(Path(folder) / "prepared", make_images())  # every file above holds over 600 bytes
        (prepared / name).write_bytes(data)
        try:
            shards.open_dataset(prepared, verify=True)
        except ValueError as error:
            assert str(prepared / name) in str(error)
            assert "\n" not in str(error)
        else:
            raise AssertionError(f"{name} replaced by {data!r} went unnoticed")


MANIFEST_FIELDS = [("format",), ("format_version",), ("image_shape",), ("image_shape", 1), ("images",),
                   ("class_names",), ("class_names", 0), ("labels",), ("labels", "rows"), ("labels", "file"),
                   ("hashes", "bytes"), ("shards",), ("shards", 0), ("shards", 0, "file"), ("shards", 0, "rows"),
                   ("shards", 0, "bytes"), ("shards", 0, "md5")]  # fmt: skip


@PROFILE
@given(field=st.sampled_from(MANIFEST_FIELDS), value=values)
def test_arbitrary_manifest_values_open_or_fail_clearly(field: tuple, value) -> None:
    with tempfile.TemporaryDirectory() as folder:
        dataset = make_images()
        prepared = write_shards(Path(folder) / "prepared", dataset)
        manifest = json.loads((prepared / shards.MANIFEST).read_text())
        *parents, last = field
        container = manifest
        for key in parents:
            container = container[key]
        container[last] = value
        (prepared / shards.MANIFEST).write_text(json.dumps(manifest))
        try:
            with shards.open_dataset(prepared) as data:
                assert np.array_equal(data.read(np.arange(len(data))), dataset.images)
                assert np.array_equal(data.labels, dataset.labels)
        except ValueError as error:
            assert str(prepared) in str(error)
            assert "\n" not in str(error)


@PROFILE
@given(
    images=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int16, np.float32]),
        shape=hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=4),
    ),
    labels=hnp.arrays(dtype=st.sampled_from([np.int64, np.float64]), shape=st.integers(0, 6)),
    classes=st.integers(0, 4),
)
def test_arbitrary_arrays_validate_or_fail_clearly(images: np.ndarray, labels: np.ndarray, classes: int) -> None:
    dataset = Dataset(images, labels, tuple(f"class {index}" for index in range(classes)))
    try:
        dataset_lib.validate(dataset)
    except ValueError as error:
        assert str(error)
        return
    # Whatever validates must survive the rest of the data path, the prepared dataset's shards included.
    statistics = dataset_lib.statistics(dataset)
    assert statistics["images"] == len(images)
    hashes = dataset_lib.content_hashes(images)
    assert hashes.shape == (len(images), dataset_lib.HASH_BYTES)
    with tempfile.TemporaryDirectory() as folder, shards.open_dataset(write_shards(Path(folder), dataset)) as data:
        assert np.array_equal(data.read(np.arange(len(images))), images)
        assert np.array_equal(data.labels, labels)
        assert np.array_equal(data.hashes, hashes)
        assert data.class_names == dataset.class_names


@PROFILE
@given(
    rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30)), min_size=0, max_size=40),
    seed=st.integers(0, 2**31),
)
def test_arbitrary_labels_split_or_fail_clearly(rows: list[tuple[int, int]], seed: int) -> None:
    labels = np.array([label for label, _ in rows], dtype=np.int64)
    # Rows drawn with the same image number are copies of one image.
    images_drawn = np.array([image for _, image in rows], dtype=np.int64).reshape(-1, 1)
    hashes = dataset_lib.content_hashes(images_drawn)
    try:
        indices = split.stratified_split(labels, hashes, 0.2, 0.2, seed)
    except ValueError as error:
        assert "cannot split" in str(error)
        return
    parts = [indices.train, indices.validation, indices.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    images_of = [set(images_drawn[part, 0].tolist()) for part in parts]
    for first, second in ((0, 1), (0, 2), (1, 2)):
        assert not images_of[first] & images_of[second]


IMAGE_MODES = {"L": 1, "RGB": 3, "RGBA": 4}
SPECS = st.builds(
    images.ImageSpec,
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    channels=st.sampled_from([1, 3]),
    interpolation=st.sampled_from(sorted(config.INTERPOLATIONS)),
    aspect=st.sampled_from(config.ASPECTS),
)


def _decodes_or_fails_clearly(data: bytes, spec: images.ImageSpec) -> None:
    try:
        decoded = images.decode_image(data, spec)
    except ValueError as error:
        assert str(error)
        return
    assert decoded.shape == (spec.height, spec.width, spec.channels)
    assert decoded.dtype == np.uint8


@PROFILE
@given(data=st.binary(max_size=400), spec=SPECS)
def test_arbitrary_bytes_decode_or_fail_clearly(data: bytes, spec: images.ImageSpec) -> None:
    _decodes_or_fails_clearly(data, spec)


@st.composite
def encoded_images(draw: st.DrawFn) -> bytes:
    """A small random image in a random mode and format, possibly cut short or with a flipped byte."""
    mode = draw(st.sampled_from(sorted(IMAGE_MODES)))
    shape = (draw(st.integers(1, 12)), draw(st.integers(1, 12)), IMAGE_MODES[mode])
    pixels = draw(hnp.arrays(np.uint8, shape))
    file_format = draw(st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "WEBP"]))
    image = Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode)
    if file_format == "JPEG" and mode == "RGBA":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=file_format)
    data = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "truncate", "flip"]))
    position = draw(st.integers(0, len(data) - 1))
    if damage == "truncate":
        del data[position:]
    elif damage == "flip":
        data[position] ^= 0xFF
    return bytes(data)


@PROFILE
@given(data=encoded_images(), spec=SPECS)
def test_small_random_images_decode_or_fail_clearly(data: bytes, spec: images.ImageSpec) -> None:
    _decodes_or_fails_clearly(data, spec)
