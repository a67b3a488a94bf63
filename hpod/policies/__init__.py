"""Efficiency policies, chained around each trial's dispatch and tell."""

from hpod.policies._base import HookContext, Policy, PolicyChain, SkipEvaluation

__all__ = ["HookContext", "Policy", "PolicyChain", "SkipEvaluation"]
