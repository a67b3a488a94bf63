"""Efficiency policies, chained around each trial's dispatch and tell."""

from hpod.policies._base import Policy, PolicyChain, SkipEvaluation, TrialEvent

__all__ = ["Policy", "PolicyChain", "SkipEvaluation", "TrialEvent"]
