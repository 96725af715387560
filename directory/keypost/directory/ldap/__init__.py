"""keypost's LDAPv3 server: a sans-IO BER codec and connection, asyncio glue, a backend Protocol.

Layers, bottom up: `ber` (bytes <-> TLV), `messages` (LDAPMessage values), `filters`
(RFC 4511 filter trees, addresses from filters), `connection` (sans-IO server state
machine: bytes in, events out, response encoders), `server` (asyncio listeners) and
`backend` (the Protocol the directory implements to answer binds and lookups).
"""
