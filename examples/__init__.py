"""TF1 model_fns written the old way, trained by this pipeline unchanged (docs/legacy.md)."""
