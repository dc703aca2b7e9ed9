"""Everything that moves mail: listeners, policy, spool, runners and their clients."""
