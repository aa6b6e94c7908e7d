"""`python -m capgate.proxy` runs the capgate CLI (used where the console script is not on PATH)."""

from capgate.proxy.cli.main import main

main()
