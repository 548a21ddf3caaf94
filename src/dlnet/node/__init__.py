"""dlnet node runtime: libp2p host, storage, roles, CLI (all I/O lives here)."""
