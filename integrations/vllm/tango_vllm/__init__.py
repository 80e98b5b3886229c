"""vLLM plugin for the harness's pruning methods (see integrations/vllm/README.md)."""
