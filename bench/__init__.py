"""Benchmarks: aweber-job beside the usual requests-oauthlib script (see run_benchmarks.py)."""
