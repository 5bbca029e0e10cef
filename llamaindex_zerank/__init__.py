"""LlamaIndex adapters for zerank-gate."""
