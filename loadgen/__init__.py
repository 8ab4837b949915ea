"""The fleet load generator: simulated meters and vehicles publishing over MQTT,
with the ground truth an end-to-end check compares the bridge's report with."""
