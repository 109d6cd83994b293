"""Prefect flows: `prepare-data` (built), then `train-run`, `train-matrix`, `evaluate`.

Flows compose the thin task wrappers of `tasks/` around the plain library functions of
`maniflow/`; they never re-implement a stage.
"""
