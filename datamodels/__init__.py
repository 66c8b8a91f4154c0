"""datamodels: training-data attribution by mass retraining.

Stages (each idempotent and resumable): prepare -> train -> fit -> estimate -> evaluate -> report.
The run directory (Parquet tables) is the public contract; see ``datamodels.store``.
"""

__version__ = "0.1.0"
