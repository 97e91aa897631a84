"""DVC stages of the image-classification pipeline and the library modules they share."""

import os

# TensorFlow prints pages of C++ start-up chatter (CUDA probing on CPU machines) before it reads
# any Python setting; this must be set before the first import to quiet it. Users can override it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
