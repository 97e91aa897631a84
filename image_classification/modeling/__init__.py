"""The Keras network, its input pipeline, training with per-epoch checkpoints, and evaluation."""
