"""Requests about the strategy policy (``GET /policy``, its reset, export and import).

The one strategy agent every study's loop asks (`hpod.policies.strategy.agent.StrategyAgent`,
weights and replay buffer in ``<data_dir>/policy``) is owned by the manager; this answers
what an operator asks of it, off the event loop (the agent reads and writes files).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from hpod.daemon.bus import Bus
from hpod.errors import RequestRejected
from hpod.policies.strategy.agent import StrategyAgent

log = structlog.get_logger("hpod.manager")


class PolicyRequests:
    """The strategy agent's status, reset, export and import."""

    def __init__(self, agent: StrategyAgent, bus: Bus) -> None:
        self.agent = agent
        self.bus = bus

    def strategy_names(self) -> list[str]:
        """The strategies the agent chooses among, by name."""
        return [strategy.name for strategy in self.agent.strategies]

    async def status(self) -> dict[str, Any]:
        """The strategy agent: weights in force, fallback, experiences, learning, recent
        decisions; and the strategies it chooses among."""
        status = await asyncio.to_thread(self.agent.status)
        return {**status, "strategies": self.strategy_names()}

    async def reset(self) -> dict[str, Any]:
        """Forget the locally learnt weights and replay buffer (back to the shipped policy)."""
        status = await asyncio.to_thread(self.agent.reset)
        log.info("policy.reset")
        await self.bus.event("policy.reset", None)
        return status

    async def export(self) -> dict[str, Any]:
        """The agent's weights and replay buffer as one JSON bundle."""
        return await asyncio.to_thread(self.agent.export)

    async def import_bundle(self, bundle: Any) -> dict[str, Any]:
        """Load a bundle exported by `export` (here or on another daemon); a bad one is
        refused with the field named, and the policy in force stays."""
        if not isinstance(bundle, dict):
            raise RequestRejected("invalid", "", "a policy bundle must be a JSON object")
        status = await asyncio.to_thread(self.agent.import_bundle, bundle)
        log.info("policy.imported", format=bundle.get("format"))
        await self.bus.event("policy.imported", None)
        return status
