"""Reading, decoding, validating and splitting images; no TensorFlow here (the data stages must not pay its import)."""
