"""The daemon's side of transfer (`hpod.daemon.transfer`): the spec field at the edge, the
status, and the driver on a real journal storage without a daemon: the plan made once, a start
cut short finished on restart, a disagreeing source's waiting trials dropped and held ones
never enqueued, the memory at the end."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.samplers import TPESampler
from optuna.trial import TrialState

from hpod.daemon.budget import Spend
from hpod.daemon.store import StudyStore
from hpod.daemon.transfer import TransferDriver, check_sources, transfer_status
from hpod.errors import RequestRejected
from hpod.modes import load_modes
from hpod.policies import PolicyChain
from hpod.policies.compose import resolve_plan
from hpod.policies.plan import Plan
from hpod.schema import Budget, StudySpec, parse_request
from hpod.transfer.agreement import Agreement
from hpod.transfer.memory import MEMORY_ATTR
from hpod.transfer.prior import PriorSampler
from hpod.transfer.store import (
    DROPPED_ATTR,
    TRANSFER_ATTR,
    TRANSFERRED_ATTR,
    counts_in_budget,
)


def spec(name: str, trials: int = 40, **extra: Any) -> StudySpec:
    """A two-parameter quadratic study."""
    return StudySpec.model_validate(
        {
            "name": name,
            "objective": "quadratic",
            "space": {
                "x": {"type": "float", "low": -2, "high": 2},
                "y": {"type": "float", "low": -2, "high": 2},
            },
            "budget": {"trials": trials},
            **extra,
        }
    )


def refusal(transfer: Any) -> RequestRejected:
    """The refusal of a study.create whose spec has `transfer`."""
    body = spec("s").model_dump(mode="json") | {"transfer": transfer}
    with pytest.raises(RequestRejected) as refused:
        parse_request({"v": 1, "type": "study.create", "study": body})
    return refused.value


def test_the_spec_field_defaults_to_auto_and_is_validated_naming_it() -> None:
    """auto, off and a list of distinct names pass; anything else is refused with
    `study.transfer`, whatever is wrong."""
    assert spec("s").transfer == "auto"
    assert spec("s", transfer="off").transfer == "off"
    assert spec("s", transfer=["a", "b"]).transfer == ["a", "b"]
    assert spec("s", transfer=["a"]).canonical() != spec("s").canonical()
    for bad in ("on", "", [], ["a", "a"], ["s"], [1], ["no spaces"], None, 3, {"a": 1}):
        refused = refusal(bad)
        assert refused.field == "study.transfer", (bad, refused.message)
    assert "cannot learn from itself" in refusal(["s"]).message
    assert refusal(["x"] * 21).field == "study.transfer"


@dataclass
class FakeBus:
    """Records the events a driver publishes."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def event(self, name: str, study: str | None, **fields: Any) -> None:
        self.events.append((name, fields))


@dataclass
class FakeRun:
    """What `TransferDriver` reads of a study's loop."""

    spec: StudySpec
    store: StudyStore
    mode_plan: Plan
    budget: Budget
    bus: FakeBus = field(default_factory=FakeBus)
    told: set[int] = field(default_factory=set)
    n_created: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    policies: PolicyChain = field(default_factory=lambda: PolicyChain([]))

    @property
    def name(self) -> str:
        return self.spec.name


def plan(s: StudySpec) -> Plan:
    """The study's plan under the balanced mode."""
    return resolve_plan(s, "balanced", load_modes(None)["balanced"])


def driver(store: StudyStore, s: StudySpec, prior: bool = False) -> TransferDriver:
    """A driver for `s` on `store` (its loop stands in as a `FakeRun`); `prior`: the mode
    knob `transfer_prior` on."""
    run = FakeRun(s, store, replace(plan(s), transfer_prior=prior), s.budget)
    return TransferDriver(run)


def finished_study(store: StudyStore, s: StudySpec, offset: float) -> None:
    """Create `s` and complete 30 random trials of the quadratic centred at `offset`, then
    write its memory as the daemon does at the end."""
    assert store.create(s)
    study = store.open(s)
    for _ in range(30):
        trial = study.ask()
        x, y = trial.suggest_float("x", -2, 2), trial.suggest_float("y", -2, 2)
        study.tell(trial, (x - offset) ** 2 + (y - offset) ** 2)
    asyncio.run(driver(store, s).finish("completed"))


@pytest.fixture
def store(tmp_path: Path) -> StudyStore:
    """A daemon store on a fresh journal file."""
    opened = StudyStore(f"journal://{tmp_path / 'studies.journal'}")
    yield opened
    opened.close()


def waiting(store: StudyStore, s: StudySpec) -> list[optuna.trial.FrozenTrial]:
    return store.trials(s, (TrialState.WAITING,))


def test_a_new_study_plans_once_and_a_restart_does_not_transfer_again(store: StudyStore) -> None:
    """The first start stores the plan and enqueues its first configuration (the rest is
    held); a second start (a restart) finds the plan and enqueues nothing more."""
    past = spec("past")
    finished_study(store, past, 0.5)
    assert isinstance(store.study_attrs("past")[MEMORY_ATTR], dict)
    new = spec("new", transfer=["past"])
    store.create(new)
    first = driver(store, new)
    asyncio.run(first.start())
    queued = waiting(store, new)
    assert len(queued) == 1  # the first of a quarter of 40
    assert {t.user_attrs[TRANSFERRED_ATTR]["from"] for t in queued} == {"past"}
    record = store.study_attrs("new")[TRANSFER_ATTR]
    assert len(record["held"]) == 9 and record["pending"] == []
    assert [name for name, _ in first.run.bus.events] == ["study.transfer"]

    again = driver(store, new)
    asyncio.run(again.start())
    assert len(waiting(store, new)) == 1
    assert again.run.bus.events == []
    shown = transfer_status(store.study_attrs("new"), new)
    assert shown["transferred"] == 1 and shown["held"] == 9 and shown["setting"] == ["past"]
    assert shown["sources"][0]["state"] == "active"


def test_a_start_cut_short_after_the_plan_is_finished_once_on_restart(store: StudyStore) -> None:
    """A crash between storing the plan and enqueueing: the restart enqueues the planned
    configurations, once."""
    finished_study(store, spec("past"), 0.5)
    new = spec("new")
    store.create(new)
    asyncio.run(driver(store, new).start())
    record = store.study_attrs("new")[TRANSFER_ATTR]
    for trial in waiting(store, new):  # undo the enqueue: as if it never happened
        store.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    # Two configurations no trial of the study holds yet (Optuna skips enqueueing params
    # that an earlier trial has, whatever its state: taking the past study's trials here
    # made the test fail whenever one was among those undone above).
    record["pending"] = [
        {"params": {"x": 0.125 + i / 8, "y": -0.375 - i / 8}, "from": "past", "rank": i}
        for i in range(2)
    ]
    for source in record["sources"]:
        source["transferred"] = 0
    store.set_attr("new", TRANSFER_ATTR, record)
    asyncio.run(driver(store, new).start())
    asyncio.run(driver(store, new).start())
    assert len(waiting(store, new)) == 2
    assert transfer_status(store.study_attrs("new"), new)["transferred"] == 2


def test_a_disagreeing_source_is_dropped_and_its_held_configurations_never_enqueued(
    store: StudyStore,
) -> None:
    """Eight results whose order is the past study's reversed: the source disagrees, its
    waiting trials are failed and marked dropped, its held configurations forgotten; the
    budget does not count the dropped ones."""
    finished_study(store, spec("corner", trials=30), 1.5)
    new = spec("opposite", max_concurrent=1)
    store.create(new)
    one = driver(store, new)
    asyncio.run(one.start())
    study = store.open(new)
    # The study's own first results, added beside the transferred trial, which still waits
    # (the worst case: not asked when the verdict comes).
    grid = optuna.distributions.FloatDistribution(-2, 2)
    for i in range(8):
        x, y = -1.5 + 0.4 * i, -1.5 + 0.35 * i
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": x, "y": y},
                distributions={"x": grid, "y": grid},
                value=(x + 1.5) ** 2 + (y + 1.5) ** 2,
            )
        )
    one.run.told.update(range(1, 9))
    asyncio.run(one.observe())
    shown = transfer_status(store.study_attrs("opposite"), new)
    source = shown["sources"][0]
    assert source["state"] == "disagrees" and source["correlation"] < 0, shown
    assert shown["held"] == 0 and shown["dropped"] == 1 and source["pairs"] == 8
    dropped = [t for t in store.trials(new) if DROPPED_ATTR in t.user_attrs]
    assert len(dropped) == 1 and all(t.state == TrialState.FAIL for t in dropped)
    assert waiting(store, new) == []
    assert [f["change"] for _, f in one.run.bus.events][-1] == "disagreed"
    assert not one.judging


def test_off_plans_nothing_and_a_named_study_must_exist(store: StudyStore) -> None:
    """transfer off: no plan stored; a name the storage does not hold is refused at create,
    but not for a study that already exists (a repeated create)."""
    finished_study(store, spec("past"), 0.5)
    cold = spec("cold", transfer="off")
    store.create(cold)
    asyncio.run(driver(store, cold).start())
    assert TRANSFER_ATTR not in store.study_attrs("cold") and waiting(store, cold) == []
    assert transfer_status(store.study_attrs("cold"), cold)["reason"].startswith("transfer off")
    with pytest.raises(RequestRejected) as refused:
        check_sources(store, spec("named", transfer=["past", "gone"]))
    assert refused.value.field == "study.transfer" and "'gone'" in refused.value.message
    check_sources(store, spec("named", transfer=["past"]))
    check_sources(store, spec("cold", transfer=["gone"]))  # exists: answered by create


def test_a_stopped_study_leaves_a_memory_only_with_enough_trials(store: StudyStore) -> None:
    """Stopped with fewer than 8 complete trials: no memory; completed: a memory."""
    short = spec("short")
    store.create(short)
    study = store.open(short)
    for _ in range(3):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(-2, 2)})
        study.tell(trial, trial.params["x"] ** 2)
    asyncio.run(driver(store, short).finish("stopped"))
    assert MEMORY_ATTR not in store.study_attrs("short")
    asyncio.run(driver(store, short).finish("completed"))
    assert store.study_attrs("short")[MEMORY_ATTR]["n_complete"] == 3


def test_the_sources_are_the_samplers_prior_and_a_doubtful_one_is_paused_not_dropped(
    store: StudyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The started study's sampler is wrapped with the prior of its sources (never stored
    as trials). A correlation a little below 0 pauses the source: out of the prior, its held
    configurations kept back, nothing dropped; back above 0 it resumes, and once it
    supports, its held configurations are enqueued."""
    finished_study(store, spec("past"), 0.5)
    new = spec("new", transfer=["past"])
    store.create(new)
    one = driver(store, new, prior=True)
    asyncio.run(one.start())
    sampler = store.open(new).sampler
    assert isinstance(sampler, PriorSampler) and isinstance(sampler.inner, TPESampler)
    assert one.record is not None and one.record["sources"][0]["prior"] > 0
    assert one.in_use() == {"past"}
    study = store.open(new)
    for _ in range(9):  # the transferred trial first, then eight of the sampler's
        trial = study.ask()
        x, y = trial.suggest_float("x", -2, 2), trial.suggest_float("y", -2, 2)
        study.tell(trial, (x - 0.5) ** 2 + (y - 0.5) ** 2)
        one.run.n_created += 1
        one.run.told.add(trial.number)
    assert len(store.trials(new)) == 9  # the prior never became a trial

    verdicts = iter(
        [
            Agreement(-0.05, 7, False, True),
            Agreement(0.2, 8, False, False, False),
            Agreement(0.4, 9, False, False, True),
        ]
    )
    monkeypatch.setattr("hpod.daemon.transfer.judge", lambda *_: next(verdicts))
    asyncio.run(one.observe())
    source = transfer_status(store.study_attrs("new"), new)["sources"][0]
    assert source["state"] == "active" and source["paused"] and source["dropped"] == 0
    assert one.in_use() == set() and waiting(store, new) == []
    assert transfer_status(store.study_attrs("new"), new)["held"] == 9

    one.run.told.add(98)  # a new result: judged again; in use, but not supporting yet
    asyncio.run(one.observe())
    shown = transfer_status(store.study_attrs("new"), new)
    assert not shown["sources"][0]["paused"] and one.in_use() == {"past"}
    assert one.supporting() == set() and shown["held"] == 9 and waiting(store, new) == []

    one.run.told.add(99)  # supporting now: the held configurations are enqueued
    asyncio.run(one.observe())
    shown = transfer_status(store.study_attrs("new"), new)
    assert one.supporting() == {"past"}
    assert shown["held"] == 0 and len(waiting(store, new)) == 9
    changes = [f["change"] for _, f in one.run.bus.events]
    assert changes[-3:] == ["paused", "resumed", "released"]


def test_the_packaged_modes_give_the_sampler_no_prior(store: StudyStore) -> None:
    """The prior measured no better (bench/transfer.py): the modes leave it off, and a warm
    study's sampler is the plan's own, while its configurations are still transferred."""
    assert not any(mode.transfer_prior for mode in load_modes(None).values())
    finished_study(store, spec("past"), 0.5)
    warm = spec("warm", transfer=["past"])
    store.create(warm)
    one = driver(store, warm)
    asyncio.run(one.start())
    assert not isinstance(store.open(warm).sampler, PriorSampler)
    assert one.record is not None and one.record["sources"][0]["transferred"] > 0


def test_off_gives_the_sampler_no_prior(store: StudyStore) -> None:
    finished_study(store, spec("past"), 0.5)
    cold = spec("cold", transfer="off")
    store.create(cold)
    asyncio.run(driver(store, cold).start())
    assert not isinstance(store.open(cold).sampler, PriorSampler)


def test_the_judge_counts_only_the_studys_own_trials(store: StudyStore) -> None:
    """The transferred trial (the past study's best, which does well here) is not judged:
    the correlation is over the study's own trials only, and held configurations wait for
    eight of them."""
    finished_study(store, spec("past"), 0.5)
    new = spec("new", transfer=["past"])
    store.create(new)
    one = driver(store, new)
    asyncio.run(one.start())
    study = store.open(new)
    own = 0
    for _ in range(8):  # the transferred trial, then seven of the study's own
        trial = study.ask()
        x, y = trial.suggest_float("x", -2, 2), trial.suggest_float("y", -2, 2)
        study.tell(trial, (x - 0.5) ** 2 + (y - 0.5) ** 2)
        own += TRANSFERRED_ATTR not in store.trials(new)[trial.number].user_attrs
        one.run.n_created += 1
        one.run.told.add(trial.number)
    asyncio.run(one.observe())
    source = one.status()["sources"][0]  # the latest verdict (stored when one changes)
    assert own == 7 and source["pairs"] == 7 and not source["supports"]
    assert transfer_status(store.study_attrs("new"), new)["held"] == 9
    trial = study.ask()  # the eighth of its own: the source agrees, the held ones go
    x, y = trial.suggest_float("x", -2, 2), trial.suggest_float("y", -2, 2)
    study.tell(trial, (x - 0.5) ** 2 + (y - 0.5) ** 2)
    one.run.n_created += 1
    one.run.told.add(trial.number)
    asyncio.run(one.observe())
    shown = transfer_status(store.study_attrs("new"), new)
    assert shown["sources"][0]["pairs"] == 8 and shown["sources"][0]["supports"]
    assert shown["held"] == 0 and len(waiting(store, new)) == 9


def test_released_configurations_of_a_source_dropped_while_they_wait_never_ran(
    store: StudyStore,
) -> None:
    """The staged case: the source supports after eight own results, its held configurations
    are enqueued; results that reverse its order make it disagree before any is asked. They
    leave the queue as never run: stored as FAIL (the finished state Optuna's samplers skip)
    and marked dropped, outside the trial budget and the compute spent (after a restart
    too), shown as dropped, not failed; the sampler asks the study's own trials next."""
    finished_study(store, spec("past"), 0.5)
    new = spec("new", transfer=["past"])
    store.create(new)
    one = driver(store, new)
    asyncio.run(one.start())
    study = store.open(new)
    grid = optuna.distributions.FloatDistribution(-2, 2)

    def own(x: float, y: float, value: float) -> None:
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": x, "y": y}, distributions={"x": grid, "y": grid}, value=value
            )
        )
        one.run.told.add(study.get_trials(deepcopy=False)[-1].number)
        one.run.n_created += 1
        asyncio.run(one.observe())

    for i in range(8):  # on the past study's surface: it supports, its held ones go
        x = y = -1.5 + 0.4 * i
        own(x, y, (x - 0.5) ** 2 + (y - 0.5) ** 2)
    assert len(waiting(store, new)) == 10  # the first one and the nine released
    i = 0
    while one.judging:  # its order reversed: it disagrees while they all still wait
        x, y = 1.9 - 0.1 * (i % 30), -1.9 + 0.13 * (i % 29)
        own(x, y, -((x - 0.5) ** 2) - (y - 0.5) ** 2)
        i += 1
        assert i < 60, transfer_status(store.study_attrs("new"), new)
    shown = transfer_status(store.study_attrs("new"), new)
    assert shown["sources"][0]["state"] == "disagrees" and shown["dropped"] == 10
    assert waiting(store, new) == []
    trials = store.trials(new)
    dropped = [t for t in trials if DROPPED_ATTR in t.user_attrs]
    assert len(dropped) == 10 and {t.state for t in dropped} == {TrialState.FAIL}
    assert sum(counts_in_budget(t) for t in trials) == one.run.n_created == 8 + i
    spend = Spend.of_trials(trials, new.trial_timeout)  # as a restart rebuilds it
    assert spend.counted == {t.number for t in trials if t not in dropped}
    assert spend.fallback_units == 0.0 and spend.cpu_seconds == 0.0
    counts = store.summary(new)["counts"]
    assert counts == {"complete": 8 + i, "dropped": 10}, counts
    asked = study.ask()  # the queue is empty: the sampler's own proposal
    assert TRANSFERRED_ATTR not in store.trials(new)[asked.number].user_attrs
