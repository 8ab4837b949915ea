"""The ingest path: MQTT in, parse, batch, one transaction per batch, acknowledge after COMMIT."""
