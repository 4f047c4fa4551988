"""The local data plane and deployer: what Knative/KServe do on a cluster."""
