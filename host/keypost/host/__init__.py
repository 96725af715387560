"""keypost.host."""
