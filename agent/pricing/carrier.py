"""A carrier: where Kamailio sends a call, printed the way Kamailio reads it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Carrier:
    tenant: str
    carrier_tag: str
    host: str
    port: int | None = None
    protocol: str = "UDP"
    active: bool = True

    address: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # `PROTOCOL:host:port` (Canyan's format), `PROTOCOL:host` when the port is unset; computed once,
        # since every authorization prints its carriers.
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        text = f"{self.protocol}:{host}" if self.port is None else f"{self.protocol}:{host}:{self.port}"
        object.__setattr__(self, "address", text)
