from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from image_classification.config import Params
from image_classification.data.dataset import Dataset
from image_classification.modeling import architecture, runtime
from image_classification.serving import savedmodel
from tests.conftest import write_shards


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from image_classification.config import parse_params
    from tests.conftest import make_images, merged, raw_params

    params = parse_params(merged(raw_params(), {"train": {"filters": 4, "dense_units": 8}}))
    dataset = make_images(classes=3, per_class=10, size=12)
    runtime.seed_everything(0)
    classifier = architecture.build_model((12, 12, 1), 3, params.train)
    path = tmp_path_factory.mktemp("savedmodel") / "1"
    savedmodel.export_savedmodel(classifier, dataset.class_names, path)
    return classifier, dataset, path


# The contract clients are written against. Changing it breaks every client: change this on purpose only.
CONTRACT = {
    "input": {"name": "images", "dtype": "uint8", "shape": [None, 12, 12, 1]},
    "outputs": {
        "class_id": {"dtype": "int64", "shape": [None]},
        "class_name": {"dtype": "string", "shape": [None]},
        "probabilities": {"dtype": "float32", "shape": [None, 3]},
    },
}


def test_layout_and_endpoints(exported: tuple) -> None:
    _, _, path = exported
    assert (path / "saved_model.pb").is_file()
    assert (path / "variables").is_dir()
    assert set(tf.saved_model.load(str(path)).signatures) == {"serve", "serving_default"}


@pytest.mark.parametrize("endpoint", ["serve", "serving_default"])
def test_signature_contract(exported: tuple, endpoint: str) -> None:
    _, _, path = exported
    function = tf.saved_model.load(str(path)).signatures[endpoint]
    args, kwargs = function.structured_input_signature
    assert args == ()
    assert kwargs == {"images": tf.TensorSpec([None, 12, 12, 1], tf.uint8, name="images")}
    outputs = function.structured_outputs
    assert {name: (spec.dtype, spec.shape.as_list()) for name, spec in outputs.items()} == {
        "probabilities": (tf.float32, [None, 3]),
        "class_id": (tf.int64, [None]),
        "class_name": (tf.string, [None]),
    }
    assert savedmodel.signature(path, endpoint) == CONTRACT


def test_class_names_travel_inside_the_savedmodel(exported: tuple) -> None:
    _, dataset, path = exported
    loaded = tf.saved_model.load(str(path))
    assert [name.decode() for name in loaded.class_names[0].numpy()] == list(dataset.class_names)
    assert not [file for file in path.rglob("*") if file.suffix in (".txt", ".json")], "no side file"
    classifier = savedmodel.load_classifier(path)
    assert classifier.class_names == dataset.class_names
    assert classifier.image_shape == (12, 12, 1)


def test_load_classifier_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a readable SavedModel"):
        savedmodel.load_classifier(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "saved_model.pb").write_bytes(b"not a protocol buffer")
    with pytest.raises(ValueError, match="not a readable SavedModel"):
        savedmodel.load_classifier(tmp_path / "broken")
    module = tf.Module()
    module.double = tf.function(lambda x: {"y": 2 * x}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "other"), signatures={"serve": module.double})
    with pytest.raises(ValueError, match="no 'serve' endpoint taking a batch of uint8 images"):
        savedmodel.load_classifier(tmp_path / "other")


@pytest.mark.parametrize("batch", [1, 7, 30])
def test_reloaded_model_matches_keras_at_any_batch_size(exported: tuple, batch: int) -> None:
    classifier, dataset, path = exported
    images = dataset.images[:batch]
    expected = classifier.predict(images, verbose=0)
    outputs = savedmodel.predict_savedmodel(path, images, batch_size=4)
    agreement = savedmodel.compare(expected, outputs["probabilities"])
    assert agreement.images == batch
    assert agreement.mismatched_classes == 0
    assert agreement.max_abs_difference <= 1e-5
    assert np.array_equal(outputs["class_id"], expected.argmax(axis=1))
    names = np.array(dataset.class_names)[outputs["class_id"]]
    assert outputs["class_name"].astype(str).tolist() == names.tolist()


def test_rows_streamed_from_shards_give_the_same_outputs(exported: tuple, tmp_path: Path) -> None:
    _, dataset, path = exported
    folder = write_shards(tmp_path / "prepared", dataset)
    rows = np.array([29, 3, 4, 5, 17, 0, 12])
    # The same batches as the array gives, so that the outputs are equal to the bit.
    expected = savedmodel.predict_savedmodel(path, dataset.images[rows], batch_size=3)
    streamed = savedmodel.predict_shards(path, folder, rows, batch_size=3)
    batches = savedmodel.predict_savedmodel(path, (dataset.images[rows[start : start + 3]] for start in range(0, 7, 3)))
    for name in expected:
        assert np.array_equal(streamed[name], expected[name]), name
        assert np.array_equal(batches[name], expected[name]), name


def test_streaming_from_a_folder_without_a_prepared_dataset_fails(exported: tuple, tmp_path: Path) -> None:
    _, _, path = exported
    with pytest.raises(ValueError, match=r"no prepared dataset \(manifest.json missing\); run `dvc repro prepare`"):
        savedmodel.predict_shards(path, tmp_path, np.arange(3))


def test_serve_rejects_wrong_dtype_and_shape(exported: tuple) -> None:
    _, _, path = exported
    loaded = tf.saved_model.load(str(path))
    with pytest.raises((TypeError, ValueError)):
        loaded.serve(tf.zeros((1, 12, 12, 1), tf.float32))
    with pytest.raises((TypeError, ValueError)):
        loaded.serve(tf.zeros((1, 10, 10, 1), tf.uint8))


def test_compare_detects_disagreement() -> None:
    keras_probabilities = np.array([[0.9, 0.1], [0.4, 0.6]], np.float32)
    agreement = savedmodel.compare(keras_probabilities, np.array([[0.9, 0.1], [0.6, 0.4]], np.float32))
    assert agreement.mismatched_classes == 1
    assert agreement.max_abs_difference == pytest.approx(0.2)
    with pytest.raises(ValueError, match="shape"):
        savedmodel.compare(keras_probabilities, keras_probabilities[:1])


def test_export_rgb_model(tmp_path: Path, params: Params, tiny_dataset: Dataset) -> None:
    classifier = architecture.build_model((12, 12, 3), 3, params.train)
    savedmodel.export_savedmodel(classifier, tiny_dataset.class_names, tmp_path / "rgb")
    outputs = savedmodel.predict_savedmodel(tmp_path / "rgb", np.zeros((2, 12, 12, 3), np.uint8))
    assert outputs["probabilities"].shape == (2, 3)
