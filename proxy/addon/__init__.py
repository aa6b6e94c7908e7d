"""The mitmproxy addon: the hot path (checks, inject, tripwire, scrub, flow state, reload)."""
