"""The HTTP surface: the Starlette app (`app`), stream bodies (`streams`), the process."""
