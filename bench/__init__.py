"""Benchmarks: ``python -m bench`` (or ``make bench``) runs every module listed in ``bench.__main__``."""
