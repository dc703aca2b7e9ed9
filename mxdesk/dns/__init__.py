"""DNS for hosted domains: the record plan, providers, the authoritative check, the lifecycle."""
