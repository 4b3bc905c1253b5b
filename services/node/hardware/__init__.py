"""The node's hardware: GPU and system telemetry, power profiles and their schedule."""
