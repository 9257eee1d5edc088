"""Speed and memory benchmarks (not tests): `python -m benchmarks.run --suite all [--quick]`."""
