"""Customers, organisations, their identities on every channel, merge/unmerge, the 360 view."""
