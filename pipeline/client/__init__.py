"""What talks to a server: ``pipeline tail`` (`tail`, `render`)."""
