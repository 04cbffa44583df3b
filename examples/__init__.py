"""Runnable examples: each folder holds a stages module, a pipelines.yaml and a README."""
