"""The OpenAI-compatible server: `pagoda serve`."""
