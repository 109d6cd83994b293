"""Prefect tasks: thin wrappers around `maniflow` library functions.

Caching (explicit keys from input fingerprints, JSON results), retries and concurrency live
here and in `flows/`, never in `maniflow/`. The per-episode units they map take small picklable
arguments and return small records, so they run unchanged on Dask workers.
"""
