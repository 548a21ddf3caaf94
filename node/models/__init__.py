"""Encoder models: the built-in default model and the testnet kinds."""
