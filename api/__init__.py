"""The Litestar HTTP API: it only starts, queries and signals workflows."""
