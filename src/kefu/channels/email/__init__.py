"""Email channel: SMTP receiver and IMAP polling in, threading, quarantine, loop protection, replies out."""
