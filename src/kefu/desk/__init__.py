"""The agent desktop: the contact in hand, screen pop, knowledge panel, wrap-up, work lists."""
