"""The TF Serving SavedModel: export and verification, prediction on image files, and the MLflow pyfunc wrapper."""
