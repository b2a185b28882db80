"""Real S3 servers on loopback for tests, benchmarks and demos (moto, SeaweedFS); not used by
the proxy itself."""
