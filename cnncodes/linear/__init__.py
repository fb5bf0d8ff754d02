"""Linear classifiers on codes: pipelines, model selection, the model file, raw pixels, the transformer."""
