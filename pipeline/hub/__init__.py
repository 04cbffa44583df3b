"""Per-pipeline broadcast: retention ring, per-client cursors, resume with ``since``."""
