"""Metrics, traces and request logs."""
