"""One declaration per ``model.arch`` (``datamodels.models.base.Architecture`` subclasses)."""
