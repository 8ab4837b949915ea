"""The ``fleet-bridge`` command line: one module per command family, no ingest logic."""
