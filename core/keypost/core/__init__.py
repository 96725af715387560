"""keypost.core: key containers, issuance policy and S/MIME; pure, no sockets."""
