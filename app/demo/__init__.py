"""``kvwall --demo`` and the tiny random-weight GGUF models it runs, shared with the tests
and benchmarks. Qt-free."""
