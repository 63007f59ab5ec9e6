# Local stub (see ../../__init__.pyi): the two py-evm building blocks of PyEVMBackend.call that
# cityid.chain.embedded reuses to keep a revert's raw data.
from typing import Any

class _Computation:
    is_error: bool
    error: BaseException | None
    output: bytes

class EVMSpoofTransaction:
    def __init__(self, transaction: Any, from_: str) -> None: ...

def _execute_and_revert_transaction(
    chain: Any, transaction: Any, block_number: Any = "latest"
) -> _Computation: ...
