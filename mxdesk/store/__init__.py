"""The ticket store: LMTP delivery, threading and the tickets database."""
