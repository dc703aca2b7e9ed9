"""`python -m mxdesk` is the `mxdesk` command."""

from mxdesk.cli import main

main()
