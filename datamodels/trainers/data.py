"""Training data as the trainers see it: ``TrainData`` and ``load_train_data`` live in
``datamodels.data.resident`` (the data layer); this module keeps their old import path."""

from datamodels.data.resident import TrainData, _stats, load_train_data

__all__ = ["TrainData", "_stats", "load_train_data"]
