"""Placeholder until the proxy lands: validates the example caps.yaml."""
