"""Test helpers: fleets, real-process wrappers (responder, mosquitto), Prometheus, waiting."""
