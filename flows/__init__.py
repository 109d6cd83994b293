"""Prefect flows: `prepare-data`, `train-run`, `train-matrix` and `evaluate`.

Flows compose the thin task wrappers of `tasks/` around the plain library functions of
`maniflow/`; they never re-implement a stage.
"""
