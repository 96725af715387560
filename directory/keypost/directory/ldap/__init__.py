"""keypost's LDAPv3 server: a sans-IO BER codec and connection, asyncio glue, a backend Protocol.

Layers, bottom up: `ber` (bytes <-> TLV), `messages` (LDAPMessage values), `filters`
(RFC 4511 filter trees, addresses from filters), `dn` (distinguished names),
`connection` (sans-IO server state machine: bytes in, events out, response encoders),
`answers` (what a search returns), `cache` (the bounded memo caches), `server`
(asyncio listeners) and `backend` (the Protocol the directory implements to answer
binds and lookups).
"""
