"""`capgate` with policy_decision recording switched off, for the with/without comparison.

    python -m tests.bench.nodecisions --home H proxy --caps F --listen HOST:PORT

The same command line and code path as `capgate proxy`; only `Broker.record_decision`
does nothing. A benchmark tool, never a deployment option.
"""

from capgate.broker.service import Broker
from capgate.proxy.cli.main import main


def _skip(self: Broker, decision: object) -> None:
    return None


Broker.record_decision = _skip  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
