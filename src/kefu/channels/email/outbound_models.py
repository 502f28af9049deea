"""Tables of outbound email (none yet)."""
