"""Runs: a source through transforms into numbered envelopes, delivered to sinks.

- `acks`: acknowledgements carried with chunks.
- `attempt`: one attempt of a stage on a chunk (bound, awaited or threaded, timed).
- `isolate`: one per-chunk call with timeout and retry; failures as values.
- `maps`: plain maps run inline, fused into one function; failures as values.
- `source`: reading the source (and the leading sync maps) with per-chunk isolation.
- `chain`: the transforms after the source.
- `run`: one run, numbering envelopes (`Run`).
- `fanout`: delivering envelopes to sinks; sink lifecycle.
- `supervisor`: every run of a process: triggers, states, shutdown.

Nothing here imports the hub, the server or the client; the hub is plugged in as a
``publish`` callable.
"""
