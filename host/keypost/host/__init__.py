"""keypost.host: the native messaging host behind the Thunderbird add-on (see PROTOCOL.md)."""
