"""A carrier: where Kamailio sends a call, printed the way Kamailio reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Carrier:
    tenant: str
    carrier_tag: str
    host: str
    port: int | None = None
    protocol: str = "UDP"
    active: bool = True

    @property
    def address(self) -> str:
        """`PROTOCOL:host:port` (Canyan's format); `PROTOCOL:host` when the port is unset."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        if self.port is None:
            return f"{self.protocol}:{host}"
        return f"{self.protocol}:{host}:{self.port}"
