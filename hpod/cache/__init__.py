"""The result cache: evaluations already done, shared by every study, kept across restarts."""

from hpod.cache.results import ResultCache, cache_key

__all__ = ["ResultCache", "cache_key"]
