"""The ground floor: names and the id scheme, timeouts and retry policies, settings, the payload
converter and codec, the Temporal client factory, the Postgres pool and migrations, telemetry.

Nothing here imports a layer above it (``tests/test_layers.py`` keeps it so)."""
