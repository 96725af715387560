"""keypost.installer."""
