"""The MLflow signatures: one image input for both logged models, the outputs each returns."""

from __future__ import annotations

from image_classification.serving import contract
from image_classification.tracking import signatures


def test_both_models_take_the_same_named_uint8_images() -> None:
    keras_input = signatures.keras_signature((28, 28, 1), 10).inputs.to_dict()
    served_input = signatures.serving_signature((28, 28, 1)).inputs.to_dict()
    assert keras_input == served_input
    assert keras_input == [
        {"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": (-1, 28, 28, 1)}, "name": contract.INPUT_NAME}
    ]


def test_outputs_are_a_probability_tensor_or_one_record_per_image() -> None:
    probabilities = signatures.keras_signature((32, 32, 3), 7).outputs.to_dict()
    assert probabilities == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 7)}, "name": "probabilities"}
    ]
    served = signatures.serving_signature((32, 32, 3)).outputs
    assert served.input_names() == list(contract.OUTPUTS)
