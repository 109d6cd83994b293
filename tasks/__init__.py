"""Prefect tasks: thin wrappers around `maniflow` library functions.

Caching, retries, concurrency and artifacts live here and in `flows/`, never in `maniflow/`.
The per-episode work units they will map (e.g. `maniflow.frames.process_episode`) take small
picklable arguments and return small records, so they run unchanged on Dask workers.
"""
