"""Benchmarks of suprsync against bare-tool baselines; run with ``make bench``."""
