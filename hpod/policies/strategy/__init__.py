"""The strategy policy (issue 6): which sampler, pruner and fidelity schedule a study uses.

This package holds the parts that do not learn: the actions (`actions.py`), what a study
looks like to the selector (`features.py`) and the rule-based selector (`rules.py`), which is
the fallback of the learned policy and the baseline it must beat. The learner and the wiring
into the daemon build on these.
"""
