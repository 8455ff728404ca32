"""OpenTelemetry metrics and spans of the worker runtime and the stores (the
``[otel]`` extra; a no-op when the OpenTelemetry API is not installed).
"""
