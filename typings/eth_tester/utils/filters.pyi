# Local stub (see ../__init__.pyi): eth-tester's own log filter, reused by cityid.chain.embedded.
from typing import Any

def check_if_log_matches(
    log_entry: Any, from_block: Any, to_block: Any, addresses: Any, topics: Any
) -> bool: ...
