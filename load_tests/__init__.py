"""irisgate load tests: locust users for REST v1, REST v2 and gRPC."""
