"""The image-classification pipeline's library: data, modeling, tracking and serving.

`stages/` holds the five DVC entry points; each calls one function of this package. Sub-packages
name the concerns: `data` (reading, decoding, validating and splitting images), `modeling` (the Keras
network, its input pipeline, training and evaluation), `tracking` (MLflow runs and the model registry)
and `serving` (the SavedModel, its export and prediction). `config`, `artifacts` and `runner` are
shared by all of them.
"""

import os

# TensorFlow prints pages of C++ start-up chatter (CUDA probing on CPU machines) before it reads
# any Python setting; this must be set before the first import to quiet it. Users can override it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
