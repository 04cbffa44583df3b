"""Access-log example: a web server's Combined Log Format log, parsed and counted."""
