"""Sensors example: simulated temperature probes, validated and watched for anomalies."""
