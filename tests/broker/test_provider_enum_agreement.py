"""caps/ keeps its own copy of the provider slugs (it may not import broker/): they must agree."""

from capgate.broker.providers import PROVIDER_SLUGS
from capgate.caps import AUTH_PROVIDERS


def test_caps_provider_enum_matches_the_broker_table():
    assert set(AUTH_PROVIDERS) == set(PROVIDER_SLUGS)
