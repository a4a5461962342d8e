"""Test oracles: what the real llama-server says it allocated, to check kvwall against."""
