"""Key names of the fleet's read model and command channel, all in one hash slot
(`{<ns>:fleet}`): small data, read together, so one node answers a whole `ls --fleet`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FleetKeys:
    namespace: str

    @property
    def base(self) -> str:
        return f"{self.namespace}:{{{self.namespace}:fleet}}"

    @property
    def managers(self) -> str:  # zset: manager id -> last heartbeat (ms)
        return self.base + ":managers"

    @property
    def events(self) -> str:  # stream: every manager's events, tagged with the manager id
        return self.base + ":events"

    def summary(self, manager_id: str) -> str:  # JSON: host, engine, tiers, shared-tier state, counts
        return f"{self.base}:summary:{manager_id}"

    def contexts(self, manager_id: str) -> str:  # JSON: the manager's context rows (ls fields)
        return f"{self.base}:contexts:{manager_id}"

    def commands(self, manager_id: str) -> str:  # list: fleet commands for one manager
        return f"{self.base}:cmd:{manager_id}"

    def reply(self, request_id: str) -> str:  # list: one manager's answer to one request
        return f"{self.base}:reply:{request_id}"
