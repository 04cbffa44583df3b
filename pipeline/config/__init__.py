"""``pipelines.yaml`` -> resolved stages: parsing with line marks, ``${VAR}``, models, loading.

- `parse`: safe YAML with a line for every node.
- `env`: ``${VAR}`` interpolation, remembering which values came from the environment.
- `models`: the pydantic models and `load`, every problem of a file at once.
- `loader`: ``use:`` + ``with:`` -> a bound, checked `ResolvedStage`.
- `catalog`: the built-in stages' docs (``pipeline stages``).
"""
