"""What the running service holds: settings, the backend owner, the effective limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.base import BackendInfo, Limits, stricter
from service.config import Settings
from service.owner import BackendOwner
from service.store import Storage


@dataclass
class ServiceState:
    settings: Settings
    owner: BackendOwner
    predictor: dict[str, object] | None = field(default=None)
    """Description of the loaded pulse predictor (set by the predictor, once it exists)."""

    @property
    def storage(self) -> Storage:
        return self.owner.storage

    @property
    def configured_kind(self) -> str:
        """The backend kind the settings ask for (known even while a bench is unreachable)."""
        return "hardware" if self.settings.backend == "visa" else "simulated"

    async def backend(self) -> tuple[BackendInfo, Limits]:
        """The backend's description and the effective limits (the stricter of the configured
        ones and the backend's own). Raises BackendUnavailable while it cannot be reached."""
        info = await self.owner.describe()
        return info, stricter(self.settings.limits.to_limits(), info.limits)
