"""The database schema: versioned migrations and daily partitions."""
