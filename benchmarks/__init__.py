"""irisgate benchmarks: ``python -m benchmarks`` (``make bench``)."""
