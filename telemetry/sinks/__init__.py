"""One small module per sink; sinks never import each other. telemetry.config (the composition
root) imports the ones every configuration has (memory, console, jsonl, pushgateway); the heavy
ones (OpenTelemetry, Prometheus) load only when configured."""
