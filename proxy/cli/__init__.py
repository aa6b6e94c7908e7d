"""The `capgate` command: `main` holds the global options, one module per command group."""
