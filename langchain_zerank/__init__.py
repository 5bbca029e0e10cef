"""LangChain adapters for zerank-gate."""
