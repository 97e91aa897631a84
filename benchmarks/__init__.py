"""Benchmarks of the pipeline against plain Keras: `python -m benchmarks.run` (`make bench`)."""
