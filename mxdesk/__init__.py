"""mxdesk: a self-hosted mail gateway for helpdesks."""
