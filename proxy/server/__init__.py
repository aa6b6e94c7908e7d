"""The control plane (`capgate serve`): JSON API, web console, OAuth callback."""
