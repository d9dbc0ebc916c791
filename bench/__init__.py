"""pqmim benchmarks: `python -m bench speed` and `python -m bench kodak`."""
