"""pqmim benchmarks: `python -m bench {run,report,speed,curves,exactness,progressive}` (see
bench/__main__.py; each takes -h)."""
