"""keypost.directory."""
