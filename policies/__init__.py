"""What the gateway decides per request before and after the upstream call: routing, limits, caches, money."""
