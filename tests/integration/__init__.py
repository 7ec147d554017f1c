"""Integration tests against a real vLLM server.

A package, so that its conftest does not shadow tests/conftest.py as module `conftest`."""
