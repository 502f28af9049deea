"""Tables of this channel (none yet)."""
