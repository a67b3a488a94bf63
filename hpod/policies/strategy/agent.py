"""The strategy agent: decides each study's strategy and learns from what it earned.

One agent per daemon. By default ``auto`` is the static rule (`rules.py`): the learned
policy was measured no better than a one-line rule, and online learning made it worse
(issue 14), so the agent decides by the rule and only records experience. With
``learned=True`` (the ``policy_learned`` setting) it is the learned policy: it scores every
strategy that can apply with the learned ensemble (`model.py`, NumPy) and takes the best one
only where the networks agree it beats the rule's pick; otherwise, or without usable
weights, the rule decides. That is
the conservative part: a bad exploratory choice costs a user real compute, so exploration is
rare (it decays with the agent's own experience), tries only a strategy whose plan differs
once composed with the mode's (`behaviour`: ``tpe`` and ``tpe-multivariate`` are one in Optuna
5, and both are ``tpe-median`` where the mode's pruner is the median), with a chance
that bounds its expected loss, and lasts one window unless it won.

Every decision's outcome goes to the replay buffer on disk; with learning on, after enough
new experience the agent starts the learner as a separate process (`learner.py`, the only
place torch is imported besides the GP's sampler process), logs what it did when it ends
(weights installed, or refused by the check suite with the figures) and picks up new
weights when they appear.
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from hpod.errors import RequestRejected
from hpod.policies.plan import Plan
from hpod.policies.strategy import model, rules
from hpod.policies.strategy.actions import BUILTIN, SpaceShape, Strategy, action_features
from hpod.policies.strategy.features import FEATURE_NAMES
from hpod.policies.strategy.replay import (
    MAX_LOCAL,
    Experience,
    ReplayBuffer,
)
from hpod.policies.strategy.reward import WindowOutcome, target
from hpod.sampling import process as sampler_process

log = structlog.get_logger("hpod.strategy")

BUNDLE_FORMAT = "hpod-policy/1"
#: Networks (of the ensemble's five) that must prefer the policy's pick over the rules' pick.
QUORUM = 4
#: Fewer training experiences than this and the weights are not trusted.
MIN_TRAINED_ON = 50
#: Start the learner after this many new local experiences.
LEARN_EVERY = 25
#: Chance of exploring before the agent has experience of its own; it decays as
#: EXPLORE / (1 + local experiences / 200), and is lowered further so that the expected
#: loss stays bounded (`MAX_EXPECTED_LOSS`).
EXPLORE = 0.1
#: Exploration's expected loss per decision, in predicted reward (the networks' target
#: units): the chance of exploring times the predicted gap to the best never exceeds it.
MAX_EXPECTED_LOSS = 0.01
#: A strategy predicted this much below the best (target units) is never explored.
MAX_EXPLORE_GAP = 0.5


def behaviour(strategy: Strategy, shape: SpaceShape, plan: Plan | None = None) -> str:
    """What `strategy` does to a study of `shape`, as a key: two strategies with the same key
    are the same algorithm there (exploring from one to the other tries nothing).

    `plan` is the plan the study would run under with `strategy` in force (the mode's plan
    with it laid over, `hpod.policies.compose`): the key is then that plan's sampler, pruner
    and ladder, not the strategy's own. It matters: a strategy chosen by ``auto`` without a
    pruner keeps the mode's, so under ``balanced`` on an objective that reports epochs
    ``tpe``, ``tpe-multivariate`` and ``tpe-median`` all run TPE with the median pruner.
    Without a plan (the simulated studies of training and of the check suite, which run each
    strategy as named) the strategy's own fields are the key."""
    source: Plan | Strategy = plan if plan is not None else strategy
    sampler, pruner = source.sampler, source.pruner
    options = dict(source.sampler_options)
    if sampler == "tpe":
        if options.get("multivariate"):
            options.setdefault("group", True)  # as `hpod.engine.make_sampler` builds it
        # Optuna 5's TPE is multivariate by default: ``tpe`` and ``tpe-multivariate`` give
        # identical trials for a seed (issue 14); ``group`` acts on conditional parameters only.
        options.setdefault("multivariate", True)
        if not shape.n_conditional:
            options.pop("group", None)
    return json.dumps(
        [
            sampler,
            options,
            pruner,
            source.pruner_options if pruner != "none" else {},
            # Rounded: the modes file writes 0.111111 where a strategy has 1/9.
            [round(f, 4) for f in source.ladder] if shape.fidelity == "data" else [1.0],
        ],
        sort_keys=True,
        default=str,
    )


def shipped_dir() -> Path:
    """Where the package keeps the trained default (weights and its training buffer)."""
    return Path(str(files("hpod").joinpath("data/strategy")))


@dataclass(frozen=True)
class Decision:
    """One strategy decision and everything it was based on."""

    strategy: Strategy
    #: "forced" (the study names its strategy), "policy", "explore" or "rules".
    source: str
    features: list[float]
    #: Predicted reward (mean of the ensemble) of each strategy that can apply.
    scores: dict[str, float]
    #: Strategies that cannot apply, with the reason.
    masked: dict[str, str]
    reason: str
    told: int
    #: Trials numbered from here on belong to this decision's window.
    first_trial: int
    #: For an exploration, the strategy it stands in for and that one's predicted reward
    #: (target units): the next decision goes back to it unless the exploration won.
    instead_of: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The decision as recorded on the study and published as `strategy.chosen`."""
        return {
            "strategy": self.strategy.name,
            "source": self.source,
            "reason": self.reason,
            **({"instead_of": self.instead_of} if self.instead_of else {}),
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
            "masked": self.masked,
            "features": {n: round(v, 4) for n, v in zip(FEATURE_NAMES, self.features, strict=True)},
            "told": self.told,
            "first_trial": self.first_trial,
        }


class StrategyAgent:
    """Decides strategies (policy, rules or forced) and keeps the experience they earn."""

    def __init__(
        self,
        policy_dir: Path,
        strategies: tuple[Strategy, ...] = BUILTIN,
        *,
        explore: bool = True,
        learn: bool = True,
        seed: int | None = None,
        shipped: Path | None = None,
        learn_every: int = LEARN_EVERY,
        learned: bool = False,
        check_tasks: int | None = None,
        check_seeds: int | None = None,
        learn_epochs: int | None = None,
    ) -> None:
        self.policy_dir = policy_dir
        #: Whether ``auto`` is the learned policy (else the rule decides; weights are still
        #: loaded, so that `status` shows them and turning it on needs no other change).
        self.learned = learned
        self.strategies = strategies
        self.explore = explore
        self.learn = learn
        self.learn_every = learn_every
        #: The learner's options: its check suite's first tasks and seeds, its epochs (None:
        #: the learner's defaults, the whole suite and the shipped training's epochs).
        self.learner_options = {
            "--check-tasks": check_tasks,
            "--check-seeds": check_seeds,
            "--epochs": learn_epochs,
        }
        self.shipped = shipped or shipped_dir()
        self.buffer = ReplayBuffer(policy_dir / "replay.jsonl")
        self._random = random.Random(seed)
        self._recent: deque[dict[str, Any]] = deque(maxlen=50)
        self._learner: subprocess.Popen[bytes] | None = None
        self._new_experiences = 0
        self._local_count = _count(self.policy_dir / "replay.jsonl")
        self._shipped_count = _count(self.shipped / "replay.jsonl.gz")
        #: Time of the local weights file last loaded, and of the one last refused.
        self._weights_mtime: float | None = None
        self._refused_mtime: float | None = None
        self.ensemble: model.Ensemble | None = None
        self.weights_source: str | None = None
        self.fallback: str | None = None
        self._load()

    # --- weights ---------------------------------------------------------------------------

    def _load(self) -> None:
        """Use the local weights if there are any, else the shipped ones. A file that cannot
        be used is logged (file, field and reason) and the next one down is used: bad local
        weights leave the shipped ones in force, bad shipped ones leave the rules deciding.

        One guard around the whole load: whatever a file makes fail (a refusal, a bug, a
        surprise of the parser) it is refused, named in the log and in `status`; nothing
        escapes to stop the daemon. The local file's time is recorded as loaded only after a
        good load; a refused one is remembered apart, so it is not read again at every
        decision, and the fallback stays shown until a good file replaces it."""
        local = self.policy_dir / "weights.json"
        seen = _mtime(local)  # before the read: a file replaced meanwhile is read again
        candidates = [(local, "local")] if local.exists() else []
        candidates.append((self.shipped / "weights.json", "shipped"))
        problems = []
        for path, source in candidates:
            try:
                ensemble = model.load(path)
            except Exception as exc:  # the one guard: see the docstring
                field = exc.field if isinstance(exc, model.WeightsError) else ""
                reason = exc.reason if isinstance(exc, model.WeightsError) else repr(exc)
                problems.append(
                    f"weights {path} unreadable ({field + ': ' if field else ''}{reason})"
                )
                log.error(
                    "strategy.weights_unreadable",
                    path=str(path),
                    field=field or None,
                    reason=reason,
                )
                if source == "local":
                    self._refused_mtime = seen
                continue
            self.ensemble = ensemble
            self.weights_source = source
            self.fallback = f"{problems[0]}: the shipped weights decide" if problems else None
            if source == "local":
                self._weights_mtime, self._refused_mtime = seen, None
            else:
                self._weights_mtime = None
            log.info(
                "strategy.weights_loaded",
                path=str(path),
                version=ensemble.version,
                trained_on=ensemble.trained_on,
            )
            return
        self.ensemble = None
        self.weights_source = None
        self.fallback = f"{problems[0]}: the rule-based selector decides"

    def _reload_if_changed(self) -> None:
        """Load again if the local file changed since the last good load and is not the
        file last refused."""
        now = _mtime(self.policy_dir / "weights.json")
        gone = now is None and self._refused_mtime is not None
        if gone or (now != self._weights_mtime and now != self._refused_mtime):
            self._refused_mtime = None
            self._load()

    # --- deciding --------------------------------------------------------------------------

    def by_name(self, name: str) -> Strategy:
        """The strategy called `name` (KeyError if there is none)."""
        for strategy in self.strategies:
            if strategy.name == name:
                return strategy
        raise KeyError(name)

    def masks(self, shape: SpaceShape) -> dict[str, str]:
        """Why each strategy that cannot apply (automatically) to `shape` does not."""
        masked = {}
        for s in self.strategies:
            reason = s.mask_reason(shape) or (None if s.auto else "chosen only when forced")
            if reason:
                masked[s.name] = reason
        return masked

    def decide(
        self,
        shape: SpaceShape,
        features: list[float],
        mode: str,
        told: int,
        first_trial: int,
        ladder_pays: bool | None,
        current: str | None = None,
        previous: dict[str, Any] | None = None,
        *,
        plan_of: Callable[[Strategy], Plan] | None = None,
    ) -> Decision:
        """The strategy for the next window of a study that looks like `features`.

        The incumbent is the study's `current` strategy, or the rules' pick at its start; the
        policy replaces it only where `QUORUM` networks agree its pick earns more, so a
        study is not thrown between strategies on a prediction the networks are unsure of
        (each switch costs: a new sampler learns the study anew). A strategy that does the
        same as the incumbent (`behaviour`) never replaces it, and exploration never goes
        from one to the other. `plan_of` gives the plan the study would run under with a
        strategy (the daemon's composition with the mode's plan): two strategies are the same
        when their composed plans are; without it, when their own fields are.

        `previous` is the study's last decision record, its window scored (``source``,
        ``reward``, ``instead_of``): after an exploration the study goes back to the strategy
        it stood in for, unless the explored window earned more than that one was predicted
        to (then the explored strategy stays, as the incumbent)."""
        self._learner_finished()
        self._reload_if_changed()
        masked = self.masks(shape)
        candidates = [s for s in self.strategies if s.name not in masked]
        ruled, why = rules.rule(shape, ladder_pays, self.strategies)
        if ruled.name in masked:  # the rules' fallback when nothing else applies
            ruled = candidates[0] if candidates else ruled

        def decision(
            strategy: Strategy,
            source: str,
            reason: str,
            scores: dict[str, float],
            instead_of: dict[str, Any] | None = None,
        ) -> Decision:
            return Decision(
                strategy, source, features, scores, masked, reason, told, first_trial, instead_of
            )

        incumbent = next((s for s in candidates if s.name == current), ruled)
        if not self.learned:
            return decision(ruled, "rules", f"rule: {why}", {})
        if self.ensemble is None:
            return decision(ruled, "rules", self.fallback or "no trained policy", {})
        if self.ensemble.trained_on < MIN_TRAINED_ON:
            reason = f"policy v{self.ensemble.version} learned from too few studies"
            return decision(ruled, "rules", reason, {})
        predicted = self.ensemble.predict(features, [action_features(s) for s in candidates])
        means = predicted.mean(axis=0)
        scores = {s.name: float(m) for s, m in zip(candidates, means, strict=True)}
        version = f"policy v{self.ensemble.version}"
        settled = self._after_exploration(previous, candidates, current, version, scores)
        if settled is not None:
            strategy, reason = settled
            return decision(strategy, "policy", reason, scores)

        def key(strategy: Strategy) -> str:
            return behaviour(strategy, shape, plan_of(strategy) if plan_of else None)

        order = list(np.argsort(-means))
        best = candidates[int(order[0])]
        if best.name != incumbent.name and key(best) == key(incumbent):
            best = incumbent  # the same plan under another name: nothing to switch to
        if best.name != incumbent.name:
            kept = candidates.index(incumbent)
            votes = int((predicted[:, candidates.index(best)] > predicted[:, kept]).sum())
            if votes < QUORUM:
                whose = "keeps" if incumbent.name == current else "the rules'"
                reason = (
                    f"{version} prefers {best.name} but only {votes} of {len(predicted)} "
                    f"networks agree: {whose} {incumbent.name}"
                )
                source = "policy" if incumbent.name == current else "rules"
                return decision(incumbent, source, reason, scores)
        explored = self._exploration(best, candidates, key, scores, version)
        if explored is not None:
            strategy, reason = explored
            instead = {"strategy": best.name, "predicted": round(scores[best.name], 5)}
            return decision(strategy, "explore", reason, scores, instead)
        agree = (
            "keeps it"
            if best.name == current
            else "agrees with the rules"
            if best.name == ruled.name
            else f"beats {incumbent.name}"
        )
        return decision(best, "policy", f"{version}: {best.name} {agree}", scores)

    def _exploration(
        self,
        best: Strategy,
        candidates: list[Strategy],
        key: Callable[[Strategy], str],
        scores: dict[str, float],
        version: str,
    ) -> tuple[Strategy, str] | None:
        """The strategy to explore instead of `best`, if any: the best-scored one that is a
        different algorithm (`key`, its `behaviour`) and predicted at most `MAX_EXPLORE_GAP`
        below, with a chance lowered so that chance x gap stays within `MAX_EXPECTED_LOSS`."""
        if not self.explore:
            return None
        same = key(best)
        others = [s for s in candidates if key(s) != same]
        if not others:
            return None
        other = max(others, key=lambda s: scores[s.name])
        gap = max(0.0, scores[best.name] - scores[other.name])
        if gap > MAX_EXPLORE_GAP:
            return None
        chance = min(self._explore_rate(), MAX_EXPECTED_LOSS / gap if gap > 0 else 1.0)
        if self._random.random() >= chance:
            return None
        return other, (
            f"{version} tries {other.name} for one window instead of {best.name} "
            f"(predicted {gap:.3f} lower; chance {chance:.3f})"
        )

    @staticmethod
    def _after_exploration(
        previous: dict[str, Any] | None,
        candidates: list[Strategy],
        current: str | None,
        version: str,
        scores: dict[str, float],
    ) -> tuple[Strategy, str] | None:
        """After an exploration's window: back to the strategy it stood in for, unless the
        window earned more than that one's prediction (then the explored one stays)."""
        if not previous or previous.get("source") != "explore":
            return None
        instead = previous.get("instead_of")
        if not isinstance(instead, dict):
            return None
        back = next((s for s in candidates if s.name == instead.get("strategy")), None)
        explored = next((s for s in candidates if s.name == current), None)
        if back is None:
            return None
        reward = previous.get("reward")
        predicted = instead.get("predicted")
        if (
            explored is not None
            and isinstance(reward, int | float)
            and isinstance(predicted, int | float)
            and target(float(reward)) > float(predicted)
        ):
            return explored, (
                f"{version}: the exploration of {explored.name} won (reward {reward:.3f}, "
                f"{target(float(reward)):.3f} > {float(predicted):.3f} predicted for "
                f"{back.name}): keeps it"
            )
        earned = "no reward" if not isinstance(reward, int | float) else f"reward {reward:.3f}"
        return back, (
            f"{version}: back to {back.name} after one window of {current} ({earned}, not "
            f"above {back.name}'s prediction)"
        )

    def forced(
        self,
        strategy: Strategy,
        shape: SpaceShape,
        features: list[float],
        told: int,
        first_trial: int,
    ) -> Decision:
        """A decision the study made itself (a named strategy); recorded all the same."""
        reason = strategy.mask_reason(shape)
        text = f"forced by the study{f' (note: {reason})' if reason else ''}"
        return Decision(strategy, "forced", features, {}, {}, text, told, first_trial)

    def _explore_rate(self) -> float:
        return EXPLORE / (1 + self._local_count / 200)

    @staticmethod
    def experience_of(
        study: str, mode: str, decision: Decision, outcome: WindowOutcome
    ) -> Experience:
        """The experience a decision earned over its window."""
        return Experience(
            study=study,
            mode=mode,
            strategy=decision.strategy.name,
            features=list(decision.features),
            action=action_features(decision.strategy),
            reward=outcome.reward,
            improvement=outcome.improvement,
            compute=outcome.compute,
            trials=outcome.trials,
            at=time.time(),
        )

    def note_decision(self, study: str, decision: Decision) -> None:
        """Remember a decision for `status` (its reward is filled in by `record`)."""
        self._recent.append(
            {
                "study": study,
                "strategy": decision.strategy.name,
                "source": decision.source,
                "told": decision.told,
                "at": time.time(),
                "reward": None,
            }
        )

    # --- learning --------------------------------------------------------------------------

    def record(self, experience: Experience) -> None:
        """Keep a decision's outcome on disk; start learning when enough is new."""
        self._learner_finished()
        self.buffer.append(experience)
        self._local_count += 1
        self._new_experiences += 1
        for entry in reversed(self._recent):
            if entry["study"] == experience.study and entry["reward"] is None:
                entry["reward"] = round(experience.reward, 5)
                break
        if self._local_count > MAX_LOCAL * 1.1:
            self.buffer.trim(MAX_LOCAL)
            self._local_count = len(self.buffer)
        if self.learn and self._new_experiences >= self.learn_every:
            self.start_learning()

    def _learner_finished(self) -> None:
        """Once a learner process has ended, log what it did: weights installed, or refused
        by the check suite (with the figures), or its error. `status` shows the same."""
        if self._learner is None or self._learner.poll() is None:
            return
        code, self._learner = self._learner.returncode, None
        try:
            report = model.loads((self.policy_dir / "learner.json").read_bytes())
        except (OSError, ValueError) as exc:
            log.error("strategy.learning_failed", code=code, error=str(exc))
            return
        if not isinstance(report, dict) or report.get("error") or code:
            log.error("strategy.learning_failed", code=code, error=str(report)[:500])
        elif report.get("installed"):
            log.info(
                "strategy.weights_installed",
                version=report.get("version"),
                check=report.get("check"),
            )
        else:
            log.warning(
                "strategy.weights_refused",
                version=report.get("version"),
                in_force=report.get("in_force"),
                check=report.get("check"),
            )

    def start_learning(self) -> bool:
        """Start the learner process unless one is running; True if started."""
        if self._learner is not None and self._learner.poll() is None:
            return False
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        self._new_experiences = 0
        self._learner = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpod.policies.strategy.learner",
                "--policy-dir",
                str(self.policy_dir),
                "--shipped-replay",
                str(self.shipped / "replay.jsonl.gz"),
                *(a for flag, n in self.learner_options.items() if n for a in (flag, str(n))),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.policy_dir / "learner.log", "ab"),  # noqa: SIM115 (the child owns it)
        )
        log.info("strategy.learning_started", pid=self._learner.pid)
        return True

    # --- control ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the policy is and has done: version, experience, learning, recent decisions."""
        self._learner_finished()
        self._reload_if_changed()
        learner: dict[str, Any] = {
            "running": self._learner is not None and self._learner.poll() is None,
            "every": self.learn_every,
            "new_experiences": self._new_experiences,
        }
        try:
            learner["last"] = model.loads((self.policy_dir / "learner.json").read_bytes())
        except (OSError, ValueError):  # WeightsError is a ValueError
            learner["last"] = None
        return {
            "auto": "learned policy" if self.learned else "rule",
            "version": self.ensemble.version if self.ensemble else None,
            "weights": self.weights_source,
            "trained_on": self.ensemble.trained_on if self.ensemble else None,
            "fallback": self.fallback,
            "experiences": {"shipped": self._shipped_count, "local": self._local_count},
            "learning": learner,
            "exploration_rate": round(self._explore_rate(), 4) if self.explore else 0.0,
            "exploration_max_expected_loss": MAX_EXPECTED_LOSS if self.explore else 0.0,
            "strategies": [s.name for s in self.strategies],
            "recent": list(self._recent)[-20:],
            "sampler_process": sampler_process.shared_status(),
        }

    def reset(self) -> dict[str, Any]:
        """Forget what this daemon learned: back to the shipped default."""
        self._stop_learner()
        for name in ("weights.json", "replay.jsonl", "learner.json"):
            (self.policy_dir / name).unlink(missing_ok=True)
        self._local_count = 0
        self._new_experiences = 0
        self._recent.clear()
        self._load()
        log.info("strategy.reset")
        return self.status()

    def export(self) -> dict[str, Any]:
        """The weights in force and the local buffer, as one JSON bundle."""
        local = self.policy_dir / "weights.json"
        path = local if self.weights_source == "local" else self.shipped / "weights.json"
        try:
            weights = model.loads(path.read_bytes()) if self.ensemble is not None else None
        except (OSError, ValueError):  # WeightsError is a ValueError
            weights = None
        return {
            "format": BUNDLE_FORMAT,
            "exported_at": time.time(),
            "weights": weights,
            "replay": [e.to_json() for e in self.buffer],
        }

    def import_bundle(self, bundle: Any) -> dict[str, Any]:
        """Install an exported bundle (weights and buffer replace the local ones); refused
        as a whole, naming the field, if any part is bad."""
        if not isinstance(bundle, dict):
            raise RequestRejected("invalid", "bundle", "must be a JSON object")
        if bundle.get("format") != BUNDLE_FORMAT:
            raise RequestRejected(
                "invalid",
                "bundle.format",
                f"is {bundle.get('format')!r}, expected {BUNDLE_FORMAT!r}",
            )
        weights = bundle.get("weights")
        if weights is not None:
            try:
                size = len(json.dumps(weights, separators=(",", ":"), default=str))
            except (ValueError, RecursionError) as exc:
                raise RequestRejected("invalid", "bundle.weights", f"not JSON: {exc}") from exc
            if size > model.MAX_FILE_BYTES:
                raise RequestRejected(
                    "invalid", "bundle.weights", f"larger than {model.MAX_FILE_BYTES} bytes"
                )
            try:
                model.parse(weights)
            except model.WeightsError as exc:
                field = f"bundle.weights.{exc.field}" if exc.field else "bundle.weights"
                raise RequestRejected("invalid", field, exc.reason) from exc
        replay = bundle.get("replay", [])
        if not isinstance(replay, list):
            raise RequestRejected("invalid", "bundle.replay", "must be a list of experiences")
        experiences = [
            Experience.from_json(item, f"bundle.replay[{i}]") for i, item in enumerate(replay)
        ]
        self._stop_learner()
        self.buffer.replace(experiences)
        self._local_count = len(experiences)
        if weights is not None:
            model.save(self.policy_dir / "weights.json", weights)
        else:
            (self.policy_dir / "weights.json").unlink(missing_ok=True)
        self._load()
        log.info("strategy.imported", experiences=len(experiences), weights=weights is not None)
        return self.status()

    def _stop_learner(self) -> None:
        if self._learner is not None and self._learner.poll() is None:
            self._learner.terminate()
            try:
                self._learner.wait(10)
            except subprocess.TimeoutExpired:
                self._learner.kill()
        self._learner = None

    def close(self) -> None:
        """Stop a learner still running (its weights are written atomically: nothing tears)
        and the sampler process the strategies' GP runs in (daemon shutdown)."""
        self._stop_learner()
        sampler_process.stop_shared()


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _count(path: Path) -> int:
    """Lines of a buffer file (plain or gzipped), without parsing them: the daemon only shows
    the number, and parsing the shipped buffer's thousands of experiences would slow every
    start. A file that cannot be read (damaged, unreadable) counts 0 and is logged: like the
    weights, a buffer file never stops the daemon."""
    if not path.exists():
        return 0
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as lines:
            return sum(1 for line in lines if line.strip())
    except Exception as exc:  # BadGzipFile, EOFError, OSError...: a count is not worth a crash
        log.error("strategy.replay_unreadable", path=str(path), reason=repr(exc))
        return 0
