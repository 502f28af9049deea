"""Interactions: one contact on one channel, with every timestamp KPIs need, and contact reasons."""
