"""dlnet protocol: the pure, deterministic executable spec (no I/O, no clock, no libp2p)."""
