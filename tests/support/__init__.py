"""Helpers shared by the tests: services, the daemon as a subprocess, test data."""
