"""Fetchers: a company mailbox (IMAP or POP3) read into the spool, exactly once per message."""
