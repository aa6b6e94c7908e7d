"""Agent containment: the sandbox exec runs CMD in, and the relays to the proxy."""
