"""Cluster state: what the nodes of one anycast address share, backends that carry it (memory,
Redis, anytun's own sync protocol) and the service that binds it to a node's tables."""
