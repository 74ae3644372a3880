"""One module per CLI command; pilot.cli imports a module only when its command runs."""
