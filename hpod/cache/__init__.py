"""The result cache: evaluations already done, shared by every study, kept across restarts."""

from hpod.cache.results import CACHE, ResultCache, cache_key

__all__ = ["CACHE", "ResultCache", "cache_key"]
