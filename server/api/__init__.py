"""HTTP API blueprints of ``city-server`` (docs/server.md §API)."""
