"""The serving contract as plain names, importable without TensorFlow or MLflow.

The SavedModel's `serve` endpoint (also `serving_default`) takes one input, `INPUT_NAME`, a batch of
uint8 images, and returns `OUTPUTS`; the class names travel inside it as the variable collection
`CLASS_NAMES`. The MLflow signatures and the SavedModel export both read these names from here.
"""

ENDPOINT = "serve"
INPUT_NAME = "images"
OUTPUTS = ("probabilities", "class_id", "class_name")
CLASS_NAMES = "class_names"
