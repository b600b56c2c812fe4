"""anytun-relay as an anycast tunnel server: connection table, routes, configuration."""
