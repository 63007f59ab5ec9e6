"""Shared pytest set-up. Daemon fixtures live in tests/fixtures/ and start what they need themselves."""

pytest_plugins = [
    "tests.fixtures.pcsc",
    "tests.fixtures.anvil",
    "tests.fixtures.postgres",
    "tests.fixtures.browser",
]
