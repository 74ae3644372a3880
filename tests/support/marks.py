"""High-water marks one simulated install keeps in memory: many installs in one process (a test's fleet, the
load benchmark's threads) would otherwise share one update/state.json, and so be one install."""

from __future__ import annotations

from pilot.update.state import UpdateState


class MemoryMarks:
    """What pilot.update.updater.InstallMarks does with update/state.json, in memory: raised, never lowered."""

    def __init__(self) -> None:
        self.state = UpdateState()

    def load(self) -> UpdateState:
        return self.state

    def remember(self, serial: int, keyset_version: int) -> None:
        self.state = UpdateState(highest_serial=max(serial, self.state.highest_serial),
                                 highest_keyset_version=max(keyset_version, self.state.highest_keyset_version))
