"""MLflow: the tracking store, the one run each trained model gets, signatures, the registry and its quality gate."""
