"""mxdesk: a self-hosted mail gateway for helpdesks."""

__version__ = "0.1.0"
