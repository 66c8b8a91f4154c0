"""Ray orchestration (the only package that imports ray): driver, worker task, progress."""
