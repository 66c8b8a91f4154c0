"""``null``: trains nothing; deterministic pseudo-margins from the subset sizes alone
(``trainers.null``), for exercising the driver and the store at scale. It has no model, so
no functional form and no head, and its training never decodes the dataset."""

from __future__ import annotations

from datamodels.models.base import Architecture


class Null(Architecture):
    name = "null"
    trainer = "null"
    functional = None
    head = None
    trains = False
    accepts_recipe = False
    records_outputs = False
    transfers = False

    def trainer_path(self, config, loader: str) -> str:
        return "null"
