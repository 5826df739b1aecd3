"""Network architectures; each module registers itself in engines.registry."""
