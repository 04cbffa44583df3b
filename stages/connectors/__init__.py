"""Connectors: built-in stages that talk to an external system, one module per system.

Each module imports its client library itself, so the core install stays lean; when the
library is missing it fails with a one-line message naming the extra to install, so
``pipeline validate`` reports it.
"""
