"""maniflow: RoboTwin 2.0 demonstrations to path-guided ManiFlow training data (no Prefect here)."""

__version__ = "0.4.0"
