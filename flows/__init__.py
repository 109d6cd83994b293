"""Prefect flows: `prepare-data`, `train-run`, `train-matrix`, `evaluate`.

Flows compose the thin task wrappers of `tasks/` around the plain library functions of
`maniflow/`; they never re-implement a stage. (The orchestration issue adds them; today the
stages run through the `maniflow` command line.)
"""
