"""Reference harness for visual-token pruning in Video LLMs."""
