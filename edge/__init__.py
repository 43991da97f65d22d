"""The edge: the OpenAI-compatible front door that routes each request to a backend."""
