"""docs/objectives.md documents what exists: every public member of the trial context (and
nothing it lacks), the attributes hpod reads from an objective and the entry-point group."""

from __future__ import annotations

import re
from pathlib import Path

import hpod
from hpod.workers import evaluation as fidelity
from hpod.workers import registry
from hpod.workers.context import TrialContext

DOC = (Path(hpod.__file__).resolve().parent.parent / "docs" / "objectives.md").read_text()


def test_the_context_table_lists_exactly_the_public_members_of_trial_context() -> None:
    """Each `ctx.<member>` row of the table exists on TrialContext, and every public method
    and attribute of a TrialContext has a row."""
    documented = set(re.findall(r"^\| `ctx\.(\w+)", DOC, flags=re.MULTILINE))
    ctx = TrialContext({"x": 1.0})
    public = {name for name in dir(ctx) if not name.startswith("_")}
    assert documented == public


def test_the_declared_attributes_and_the_entry_point_group_are_the_code_s() -> None:
    """The attribute names hpod reads and the registration group are spelled as in the code."""
    attrs = (fidelity.FIDELITY_ATTR, fidelity.VERSION_ATTR, fidelity.DETERMINISTIC_ATTR)
    for attr in (*attrs, fidelity.RESUMABLE_ATTR):
        assert f"### `{attr}`" in DOC
    assert "### `hpod_kwargs`" in DOC
    assert f'[project.entry-points."{registry.ENTRY_POINT_GROUP}"]' in DOC
    assert "from hpod.workers.context import TrialContext, TrialPruned" in DOC
