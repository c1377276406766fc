"""Nothing here is a test: the benchmark scripts run from `scripts/bench.sh` (`make bench`)."""

collect_ignore_glob = ["*.py"]
