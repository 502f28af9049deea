"""Web chat channel: the embeddable widget, the customer and agent sockets, sequence-numbered messages."""
