"""keypost.gateway."""
