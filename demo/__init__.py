"""irisgate local demo: the whole story on one machine, no cluster, no Docker."""
