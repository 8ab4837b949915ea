"""Read-only analytics over the stored telemetry: the charging-efficiency report."""
