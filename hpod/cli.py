"""The `hpod` command: run the daemon or a worker, submit studies, inspect them."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hpod.config import redact
from hpod.errors import ConfigError

DEMO_SPEC: dict[str, Any] = {
    "objective": "svc_cv",
    "objective_kwargs": {"n_samples": 2000},
    "space": {
        "C": {"type": "float", "low": 1e-2, "high": 1e3, "log": True},
        "gamma": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    },
    "directions": ["minimize"],
    "budget": {"trials": 60},
    "max_concurrent": 4,
    "sampler": {"seed": 1},
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hpod` console script."""
    args = _parser().parse_args(argv)
    result: int = args.func(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpod", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon (and local workers on the embedded broker)")
    p.add_argument("--no-workers", action="store_true", help="do not start local workers")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("worker", help="run a Celery worker that evaluates trials")
    p.add_argument("-c", "--concurrency", type=int, default=os.cpu_count() or 1)
    p.add_argument("-n", "--name", default="hpod@%h")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="submit a study spec (JSON file) to the daemon")
    p.add_argument("spec", type=Path)
    p.add_argument("--wait", action="store_true", help="show progress until it completes")
    p.add_argument("--name", help="override the study name")
    p.add_argument("--url", help="daemon URL (default: the configured HTTP address)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("demo", help="start a daemon, run a demo study with progress, stop")
    p.add_argument("--trials", type=int, default=60)
    p.set_defaults(func=cmd_demo)

    for name, func, text in [
        ("studies", cmd_studies, "list studies"),
        ("status", cmd_status, "show a study's status"),
        ("best", cmd_best, "print a study's best parameters as JSON"),
    ]:
        p = sub.add_parser(name, help=text)
        if name != "studies":
            p.add_argument("name")
        p.add_argument("--url")
        p.set_defaults(func=func)

    for name, func, text in [
        ("stop", cmd_stop, "stop a study (trials in flight still finish)"),
        ("pause", cmd_pause, "pause a study: dispatch nothing new until resumed"),
        ("resume", cmd_resume, "resume a paused study"),
    ]:
        p = sub.add_parser(name, help=text)
        p.add_argument("name")
        p.add_argument("--url")
        p.set_defaults(func=func)

    p = sub.add_parser("budget", help="change a study's budget live")
    p.add_argument("name")
    p.add_argument("--trials", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--cpu-seconds", type=float, help="CPU seconds of evaluation")
    p.add_argument("--full-evaluations", type=float, help="full-evaluation equivalents")
    p.add_argument("--url")
    p.set_defaults(func=cmd_budget)

    p = sub.add_parser("mode", help="list the modes, or switch one study's or the default")
    p.add_argument("mode", nargs="?", help="the mode to switch to (omit to list the modes)")
    p.add_argument("--study", help="the study to switch (default: the default mode)")
    p.add_argument("--url")
    p.set_defaults(func=cmd_mode)

    p = sub.add_parser("strategy", help="switch a study's strategy live (auto, mode or a name)")
    p.add_argument("name")
    p.add_argument("strategy", help="auto, mode, or a strategy's name (hpod policy status)")
    p.add_argument("--url")
    p.set_defaults(func=cmd_strategy)

    p = sub.add_parser("policy", help="the strategy policy: status, reset, export, import")
    policy_sub = p.add_subparsers(required=True, metavar="ACTION")
    q = policy_sub.add_parser("status", help="weights in force, experiences, recent decisions")
    q.add_argument("--url")
    q.add_argument("--json", action="store_true", help="print the whole status as JSON")
    q.set_defaults(func=cmd_policy_status)
    q = policy_sub.add_parser("reset", help="forget the learnt policy (back to the shipped one)")
    q.add_argument("--url")
    q.set_defaults(func=cmd_policy_reset)
    q = policy_sub.add_parser("export", help="write weights and replay buffer to a JSON file")
    q.add_argument("file", type=Path)
    q.add_argument("--url")
    q.set_defaults(func=cmd_policy_export)
    q = policy_sub.add_parser("import", help="load a bundle written by `hpod policy export`")
    q.add_argument("file", type=Path)
    q.add_argument("--url")
    q.set_defaults(func=cmd_policy_import)
    q = policy_sub.add_parser(
        "train", help="train the default policy on the training suite (seeded, reproducible)"
    )
    q.add_argument(
        "--out", type=Path, help="where to write weights and buffer (default: the package's)"
    )
    q.add_argument("--seeds", type=int, default=8, help="studies per training task")
    q.add_argument("--processes", type=int, default=2)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_policy_train)

    p = sub.add_parser("cache", help="the shared result cache")
    cache_sub = p.add_subparsers(required=True, metavar="ACTION")
    cache_sub.add_parser("stats", help="entries, size, hits").set_defaults(func=cmd_cache_stats)
    cache_sub.add_parser("clear", help="forget every cached result").set_defaults(
        func=cmd_cache_clear
    )

    p = sub.add_parser("doctor", help="where the time goes (one study, or all) and resources")
    p.add_argument("name", nargs="?", help="a study (default: every study and the daemon)")
    p.add_argument("--url")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("workers", help="list the live workers")
    p.add_argument("--url")
    p.set_defaults(func=cmd_workers)

    p = sub.add_parser("config", help="configuration tools")
    config_sub = p.add_subparsers(required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate settings and modes without starting")
    check.set_defaults(func=cmd_config_check)

    p = sub.add_parser("journal", help="the journal file: check or repair it")
    journal_sub = p.add_subparsers(required=True, metavar="ACTION")
    q = journal_sub.add_parser(
        "repair", help="keep every valid operation, move bad lines aside (daemon stopped)"
    )
    q.add_argument("path", nargs="?", type=Path, help="default: the configured journal file")
    q.add_argument("--dry-run", action="store_true", help="only report the bad lines")
    q.set_defaults(func=cmd_journal_repair)

    p = sub.add_parser("schema", help="print the JSON Schema of the wire protocol")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("objectives", help="list the registered objectives")
    p.set_defaults(func=cmd_objectives)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM or SIGINT."""
    from hpod.daemon.service import Daemon, StartRefused
    from hpod.logs import configure_logging

    try:  # every file the daemon reads at start, before anything starts
        settings, _modes, _strategies = _validated_config()
        configure_logging(settings.log_format, settings.log_level)
        asyncio.run(Daemon(settings, start_workers=False if args.no_workers else None).run())
    except ConfigError as exc:
        # Exit 2, one line, no traceback: restarting cannot fix a file, and the units do not
        # restart on 2 (RestartPreventExitStatus=2 in systemd/hpod.service).
        print(f"hpod: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except StartRefused as exc:
        print(f"hpod: not started: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a Celery worker in this process; exit 2 first if the settings are invalid (as
    `hpod run` does: the worker unit does not restart on 2)."""
    from hpod.config import checked_settings
    from hpod.daemon.local_workers import worker_argv

    try:
        checked_settings()
    except ConfigError as exc:
        print(f"hpod: invalid configuration: {exc}", file=sys.stderr)
        return 2
    argv = worker_argv(args.concurrency, args.name, loglevel="INFO")
    os.execv(sys.executable, argv)


def _client(url: str | None = None) -> Any:
    """A client of the daemon at `url`, or of the one these settings describe. The CLI runs
    on the daemon's side, so it takes the configured or generated token either way (a
    `Client` given a URL reads no settings)."""
    from hpod.client import Client

    if url is None:
        return Client()
    from hpod.config import load_settings

    return Client(url, token=load_settings().existing_token())


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a spec; with --wait, follow it to the end and print the best result."""
    spec = json.loads(args.spec.read_text())
    if args.name:
        spec["name"] = args.name
    client = _client(args.url)
    status = client.create_study(spec)
    print(f"study {spec['name']!r}: {'created' if status['created'] else 'already exists'}")
    if args.wait:
        status = _follow(client, spec["name"])
        _print_best(status)
    return 0


def _follow(client: Any, name: str) -> dict[str, Any]:
    """Show a live progress bar until the study ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[best]}"),
    ]
    with Progress(*columns) as progress:
        bar = progress.add_task(name, total=None, best="")

        def update(status: dict[str, Any]) -> None:
            counts = status["counts"]
            done = sum(counts.get(k, 0) for k in ("complete", "pruned", "fail"))
            best = status.get("best")
            text = f"best {best['value']:.5g} (trial {best['number']})" if best else ""
            progress.update(bar, total=status["budget"].get("trials"), completed=done, best=text)

        result: dict[str, Any] = client.wait(name, on_progress=update)
        return result


def _print_best(status: dict[str, Any]) -> None:
    counts = ", ".join(f"{v} {k}" for k, v in sorted(status["counts"].items()))
    print(f"study {status['name']!r} {status['state']}: {counts}")
    if status.get("failure"):
        print(f"failed: {status['failure']}")
    if status.get("best"):
        best = status["best"]
        print(f"best value {best['value']:.6g} at trial {best['number']}")
        print("best params:", json.dumps(best["params"], indent=2, sort_keys=True))
    for t in status.get("best_trials", []):
        print(f"pareto trial {t['number']}: values {t['values']} params {json.dumps(t['params'])}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Start `hpod run` on the embedded default, run a demo study, print the best, stop."""
    from hpod.config import load_settings

    settings = load_settings()
    env = {"HPOD_LOG_LEVEL": "warning", **os.environ}  # keep the screen for the progress bar
    daemon = subprocess.Popen([sys.executable, "-m", "hpod", "run"], env=env)
    try:
        client = _client()
        _wait_healthy(client, daemon)
        spec = {**DEMO_SPEC, "name": f"demo-{time.strftime('%Y%m%d-%H%M%S')}"}
        spec["budget"] = {"trials": args.trials}
        client.create_study(spec)
        print(
            f"demo study {spec['name']!r}: {args.trials} trials of an SVC scored by 5-fold CV, "
            f"data in {settings.data_dir}"
        )
        final = _follow(client, spec["name"])
        _print_best(final)
        status = client.status(spec["name"])
        _print_strategy(status.get("strategy"))  # the demo leaves the strategy to the policy
        _print_transfer(status.get("transfer"))  # a second demo learns from the first
        _print_efficiency(status.get("efficiency"))
        print(
            f"\nInspect it: hpod status {spec['name']}   |   "
            f"optuna studies {settings.optuna_cli_storage()}"
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    return 0


def _wait_healthy(client: Any, daemon: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with code {daemon.returncode}")
        try:
            client._http("GET", "/health")
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the daemon did not become healthy in time")


def cmd_studies(args: argparse.Namespace) -> int:
    """List studies (from the daemon, or from the storage when it is not running)."""
    try:
        rows = _client(args.url).studies()
    except OSError:
        from hpod.config import load_settings
        from hpod.daemon.store import StudyStore

        store = StudyStore(load_settings().optuna_storage_url())
        rows = store.list_studies()
        store.close()
    for row in rows:
        best = "" if row["best_value"] is None else f"best {row['best_value']:.6g}"
        print(f"{row['name']:<40} {row['state'] or '-':<10} {row['mode']:<10} {best}")
    return 0


def _status(name: str, url: str | None) -> dict[str, Any]:
    """A study's status from the daemon, or straight from the storage when it is not running."""
    try:
        status: dict[str, Any] = _client(url).status(name)
        return status
    except OSError:  # daemon not reachable: the storage alone can answer
        from hpod.config import load_settings
        from hpod.daemon.store import StudyStore

        store = StudyStore(load_settings().optuna_storage_url())
        try:
            spec = store.spec(name)
            from hpod.daemon.strategy import strategy_status
            from hpod.daemon.transfer import transfer_status

            return {
                **store.summary(spec),
                "efficiency": store.efficiency(spec),
                "strategy": strategy_status(store.study_attrs(name), spec),
                "transfer": transfer_status(store.study_attrs(name), spec),
                "in_flight": 0,
                "running": False,
            }
        finally:
            store.close()


def cmd_status(args: argparse.Namespace) -> int:
    """Show a study's status and what the efficiency policies saved."""
    status = _status(args.name, args.url)
    _print_best(status)
    budget = status.get("budget") or {}
    limits = ", ".join(f"{v:g} {k}" for k, v in budget.items() if v is not None)
    print(f"mode: {status.get('mode')}  in flight: {status['in_flight']}  budget: {limits}")
    spent = status.get("spent")
    if spent:
        print(
            f"spent: {spent['trials']} trials, {spent['cpu_seconds']:g} CPU s, "
            f"{spent['full_evaluations']:g} full evaluations"
        )
    if status.get("plan"):
        plan = status["plan"]
        print(
            f"plan: sampler {plan['sampler']}, pruner {plan['pruner']}, data ladder "
            f"{'/'.join(f'{f:.0%}' for f in plan['ladder'])}, {plan['parallelism']} in parallel, "
            f"{plan['pack']} per task; policies {', '.join(plan['policies'])}"
        )
    _print_strategy(status.get("strategy"))
    _print_transfer(status.get("transfer"))
    _print_efficiency(status.get("efficiency"))
    return 0


def _reward(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _print_strategy(strategy: dict[str, Any] | None) -> None:
    """The study's strategy and its decisions: at how many told trials, what, by whom, and
    the reward its window earned."""
    if not strategy or not strategy.get("current"):
        return
    print(
        f"strategy: {strategy['current']} ({strategy['source']}; setting "
        f"{strategy['setting']}): {strategy['reason']}"
    )
    decisions = strategy.get("decisions") or []
    if len(decisions) > 1 or (decisions and decisions[0].get("reward") is not None):
        print("  told  strategy             source   reward")
        for d in decisions[-20:]:
            print(f"  {d['told']:>4}  {d['strategy']:<20} {d['source']:<8} {_reward(d['reward'])}")
        if len(decisions) > 20:
            print(f"  ({len(decisions) - 20} earlier decisions not shown)")


def _print_transfer(transfer: dict[str, Any] | None) -> None:
    """What the study took from past studies: each source, its similarity, the configurations
    transferred and dropped, and whether it still agrees; or, in one line, why nothing."""
    if not transfer:
        return
    setting = transfer["setting"]
    shown = setting if isinstance(setting, str) else ", ".join(setting)
    sources = transfer.get("sources") or []
    if not sources:
        if transfer.get("reason"):
            print(f"transfer ({shown}): {transfer['reason']}")
    else:
        print(
            f"transfer ({shown}): {transfer['transferred']} configurations transferred, "
            f"{transfer['held']} held, {transfer['dropped']} dropped"
        )
    for s in sources:
        rho = "-" if s.get("correlation") is None else f"{s['correlation']:+.2f}"
        state = f"{s['state']}, paused" if s.get("paused") else s["state"]
        print(
            f"  from {s['study']:<30} similarity {s['similarity']:.2f}  "
            f"{s['transferred']} transferred, {s.get('dropped', 0)} dropped, "
            f"{s.get('prior', 0)} in the prior  "
            f"{state} (rank correlation {rho} over {s.get('pairs', 0)} trials)"
        )
    for s in transfer.get("skipped") or []:
        print(f"  skipped {s['study']}: {s['reason']}")


def _print_efficiency(eff: dict[str, Any] | None) -> None:
    """The efficiency report: what caching, subsampling, pruning and batching saved."""
    if not eff or not eff.get("trials"):
        return
    print(f"efficiency over {eff['trials']} trials:")
    print(f"  cache hits        {eff['cache_hits']} (partial: {eff['cache_partial_hits']})")
    rungs = ", ".join(f"{n} at {where}" for where, n in sorted(eff["pruned_at"].items()))
    print(f"  pruned            {eff['pruned']}" + (f" ({rungs})" if rungs else ""))
    if eff.get("data_fraction") is not None:
        print(f"  data evaluated    {eff['data_fraction']:.2f} of the full data per trial")
    print(f"  compute spent     {eff['cpu_seconds']:.2f} CPU s")
    if eff.get("full_evaluation_cpu_seconds") is not None:
        ratio = eff.get("compute_ratio")
        print(
            f"  full evaluation   {eff['full_evaluation_cpu_seconds']:.2f} CPU s (estimated)"
            + (f", {ratio:.2f}x what was spent" if ratio else "")
        )
    warm = eff.get("warm_up") or {}
    if warm.get("trials"):
        print(
            f"  warm-up           {warm['cpu_seconds']:.2f} CPU s in {warm['trials']} worker "
            "processes' first trials (left out of both figures above)"
        )
    if eff.get("ladder_off"):
        print(f"  {eff['ladder_off']}")
    if eff.get("report_cpu_seconds"):
        print(f"  reporting         {eff['report_cpu_seconds']:.2f} CPU s (not in compute spent)")
    sampler = eff.get("sampler_process")
    if sampler:
        print(
            f"  sampler process   {sampler['cpu_seconds']:.2f} CPU s for "
            f"{sampler['suggestions']} GP suggestions (outside the daemon; the daemon's own "
            "time is below)"
        )
    _print_time_per_trial(eff.get("time_per_trial"))


#: How `hpod status` and `hpod doctor` name the parts of a trial's time.
PART_LABELS = {
    "daemon": "daemon (hpod: sampler, storage, policies, publish)",
    "transport": "transport (hpod: the broker both ways)",
    "queue_wait": "queue wait (no free worker)",
    "pack_wait": "pack wait (behind the other trials of its pack)",
    "evaluation": "evaluation (the objective)",
}


def _print_time_per_trial(parts: dict[str, Any] | None, trials: int | None = None) -> None:
    """The mean parts of a trial's time, hpod's own (daemon + transport) first."""
    if not parts:
        return
    counted = parts.get("trials", trials)
    overhead = parts.get("overhead", parts["daemon"] + parts["transport"])
    print(
        f"  time per trial    {overhead * 1000:.1f} ms of hpod (daemon + transport), "
        f"mean over {counted} trials:"
    )
    for part, label in PART_LABELS.items():
        print(f"    {label:<50} {parts[part] * 1000:9.1f} ms")


def _control(call: Any, *args: Any, **kwargs: Any) -> int:
    """Run a client call that changes a study; print its state, or the error."""
    from hpod.client import ClientError

    try:
        status = call(*args, **kwargs)
    except ClientError as exc:
        print(f"hpod: {exc}", file=sys.stderr)
        return 1
    budget = status.get("budget") or {}
    limits = ", ".join(f"{v} {k}" for k, v in budget.items() if v is not None)
    print(
        f"study {status['name']!r}: {status['state']}, {status['n_trials']} trials, budget {limits}"
    )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop a study."""
    return _control(_client(args.url).stop_study, args.name)


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause a study."""
    return _control(_client(args.url).pause_study, args.name)


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a paused study."""
    return _control(_client(args.url).resume_study, args.name)


def cmd_budget(args: argparse.Namespace) -> int:
    """Change a study's budget live."""
    limits = (args.trials, args.seconds, args.cpu_seconds, args.full_evaluations)
    if all(limit is None for limit in limits):
        print(
            "hpod: give at least one of --trials, --seconds, --cpu-seconds, --full-evaluations",
            file=sys.stderr,
        )
        return 2
    return _control(_client(args.url).set_budget, args.name, *limits)


def cmd_mode(args: argparse.Namespace) -> int:
    """List the modes with their knobs, or switch a study's (or the default) mode."""
    if args.mode is None:
        modes = _get(args.url, "/modes")
        if modes is None:
            return 1
        for name, knobs in modes["modes"].items():
            mark = "*" if name == modes["default"] else " "
            ladder = "/".join(f"{f:.0%}" for f in knobs["ladder"])
            print(
                f"{mark} {name:<10} sampler {knobs['sampler']:<6} pruner {knobs['pruner']:<18} "
                f"ladder {ladder:<12} {knobs['description']}"
            )
        return 0
    from hpod.client import ClientError

    try:
        reply = _client(args.url).set_mode(args.mode, args.study)
    except ClientError as exc:
        print(f"hpod: {exc}", file=sys.stderr)
        return 1
    target = f"study {reply['study']!r}" if reply.get("study") else "the default"
    print(f"{target}: mode {reply['mode']}")
    return 0


def cmd_strategy(args: argparse.Namespace) -> int:
    """Switch a study's strategy live; the new setting decides at once."""
    from hpod.client import ClientError

    try:
        status = _client(args.url).set_strategy(args.name, args.strategy)
    except ClientError as exc:
        print(f"hpod: {exc}", file=sys.stderr)
        return 1
    _print_strategy(status.get("strategy"))
    return 0


def _policy_call(url: str | None, method: str, *args: Any) -> dict[str, Any] | None:
    """Call a policy method of the client; None (with the reason on stderr) on an error."""
    from hpod.client import ClientError

    client = _client(url)
    try:
        result: dict[str, Any] = getattr(client, method)(*args)
        return result
    except ClientError as exc:
        print(f"hpod: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"hpod: the daemon at {client.url} does not answer: {exc}", file=sys.stderr)
    return None


def _print_policy(status: dict[str, Any]) -> None:
    """The strategy policy's status, in a few lines."""
    weights = status.get("weights") or "none"
    print(f"strategy policy version {status.get('version')}: weights {weights}")
    if status.get("auto"):
        print(f"  auto decides by: {status['auto']}")
    if status.get("sampler_process"):
        print(f"  sampler process (GP): {json.dumps(status['sampler_process'], sort_keys=True)}")
    if status.get("fallback"):
        print(f"  fallback: {status['fallback']}")
    experiences = status.get("experiences") or {}
    print(
        f"  experiences: {experiences.get('shipped', 0)} shipped, "
        f"{experiences.get('local', 0)} learnt here"
    )
    if status.get("learning"):
        print(f"  learning: {json.dumps(status['learning'], sort_keys=True)}")
        last = status["learning"].get("last")
        if isinstance(last, dict) and isinstance(last.get("check"), dict):
            print(f"  last learning: {_learning_verdict(last)}")
    if status.get("strategies"):
        print(f"  strategies: {', '.join(status['strategies'])}")
    for d in (status.get("recent") or [])[-10:]:
        print(f"  {json.dumps(d, sort_keys=True)}")


def _learning_verdict(last: dict[str, Any]) -> str:
    """The last learner run in words: installed or refused, with the check suite's figures."""
    check = last["check"]
    low, high = (check.get("interval") or [None, None])[:2]
    verdict = "installed" if last.get("installed") else "refused (it would regress)"
    return (
        f"weights v{last.get('version')} {verdict}: check-suite regret "
        f"{check.get('regret_candidate')} against {check.get('regret_in_force')} in force, "
        f"difference {check.get('difference')} (95 % interval [{low}, {high}]), worse on "
        f"{check.get('worse_on')} and better on {check.get('better_on')} of "
        f"{check.get('studies')} studies"
    )


def cmd_policy_train(args: argparse.Namespace) -> int:
    """Train the shipped policy: simulated studies of the training suite, then the ensemble
    (no daemon needed; torch is imported here only)."""
    from hpod.policies.strategy.agent import shipped_dir
    from hpod.policies.strategy.train import train_default

    out = args.out or shipped_dir()
    manifest = train_default(
        out, seeds=args.seeds, processes=args.processes, seed=args.seed, log=_say
    )
    print(f"{manifest['experiences']} experiences, weights sha256 {manifest['weights_sha256']}")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_policy_status(args: argparse.Namespace) -> int:
    """Show the strategy policy: weights in force, fallback, experiences, recent decisions."""
    status = _policy_call(args.url, "policy_status")
    if status is None:
        return 1
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        _print_policy(status)
    return 0


def cmd_policy_reset(args: argparse.Namespace) -> int:
    """Forget the locally learnt policy and its replay buffer."""
    status = _policy_call(args.url, "policy_reset")
    if status is None:
        return 1
    print("strategy policy reset to the shipped one")
    _print_policy(status)
    return 0


def cmd_policy_export(args: argparse.Namespace) -> int:
    """Write the policy's weights and replay buffer to a JSON file."""
    bundle = _policy_call(args.url, "policy_export")
    if bundle is None:
        return 1
    args.file.write_text(json.dumps(bundle) + "\n")
    print(f"wrote {args.file}: {len(bundle.get('replay') or [])} experiences")
    return 0


def cmd_policy_import(args: argparse.Namespace) -> int:
    """Load a policy bundle written by `hpod policy export` into the daemon."""
    from hpod.policies.strategy.model import loads

    try:  # size- and depth-limited: a bad bundle is an error message, never a traceback
        bundle = loads(args.file.read_bytes())
    except (OSError, ValueError) as exc:
        print(f"hpod: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1
    status = _policy_call(args.url, "policy_import", bundle)
    if status is None:
        return 1
    print(f"imported {args.file}")
    _print_policy(status)
    return 0


def _result_cache() -> Any:
    from hpod.cache import ResultCache
    from hpod.config import load_settings

    settings = load_settings()
    return ResultCache(
        settings.result_cache_dir(), settings.cache_ttl_seconds, settings.cache_size_mb
    )


def cmd_cache_stats(_args: argparse.Namespace) -> int:
    """Print the result cache's statistics (read from disk: no daemon needed)."""
    stats = _result_cache().stats()
    print(
        f"{stats['directory']}: {stats['entries']} entries, {_mb(stats['bytes'])} of "
        f"{_mb(stats['size_limit_bytes'])}, {stats['hits']} hits, {stats['misses']} misses, "
        f"entries expire after {stats['ttl_seconds'] or 'never'} s"
    )
    return 0


def cmd_cache_clear(_args: argparse.Namespace) -> int:
    """Forget every cached result (safe while the daemon runs)."""
    print(f"removed {_result_cache().clear()} entries")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    """Print a study's best parameters as JSON."""
    status = _status(args.name, args.url)
    print(json.dumps(status.get("best") or status.get("best_trials"), indent=2))
    return 0


def _get(url: str | None, path: str) -> dict[str, Any] | None:
    """GET a document from the daemon; None (with the reason on stderr) if it cannot answer."""
    from hpod.client import ClientError

    client = _client(url)
    try:
        reply: dict[str, Any] = client._http("GET", path)
        return reply
    except ClientError as exc:
        print(f"hpod: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"hpod: the daemon at {client.url} does not answer: {exc}", file=sys.stderr)
    return None


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):.0f} MB"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def cmd_doctor(args: argparse.Namespace) -> int:
    """Show where a study's time goes and its bottleneck; without a name, the whole daemon."""
    report = _get(args.url, f"/studies/{args.name}/doctor" if args.name else "/doctor")
    if report is None:
        return 1
    if args.name:
        _print_breakdown(report)
    else:
        _print_daemon_doctor(report)
    return 0


def _print_breakdown(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("stage", "seconds", "share", title=f"study {report['study']!r}")
    for stage, seconds in report["seconds"].items():
        table.add_row(stage, f"{seconds:.3f}", f"{report['shares'][stage]:.0%}")
    Console().print(table)
    print(f"{report['trials']} trials told, {report['total_seconds']:.3f} s accounted")
    _print_time_per_trial(report.get("per_trial"), report["trials"])
    latency = report.get("result_to_dispatch")
    if latency:
        print(
            f"result -> next dispatch: p50 {latency['p50'] * 1000:.1f} ms, "
            f"p99 {latency['p99'] * 1000:.1f} ms ({latency['samples']} dispatches)"
        )
    print(report["verdict"])


def _print_daemon_doctor(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    res = report["resources"]
    table = Table("process", "pid", "role", "cpu", "rss", title="daemon and local workers")
    for p in res["processes"]:
        table.add_row(
            p.get("node") or ("hpod run" if p["role"] == "daemon" else ""),
            str(p["pid"]),
            p["role"],
            _pct(p["cpu_percent"]),
            _mb(p["rss_bytes"]),
        )
    console = Console()
    console.print(table)
    high = res["memory_high_water_bytes"]
    state = "ON: dispatching one trial at a time" if res["backpressure"] else "off"
    print(f"memory {_mb(res['rss_bytes_total'])} (high-water {_mb(high)}), back-pressure {state}")
    print(
        f"in flight {res['in_flight']}/{res['max_inflight']}, workers {res['workers']}, "
        f"queues {res['queue_depth']}"
    )
    studies = Table(
        "study", "trials", "bottleneck", "share", "hpod/trial", "waits/trial", title="studies"
    )
    for name, r in report["studies"].items():
        stage = r["bottleneck"]
        share = f"{r['shares'][stage]:.0%}" if stage else "-"
        parts = r.get("per_trial")
        ours = f"{(parts['daemon'] + parts['transport']) * 1000:.1f} ms" if parts else "-"
        waits = f"{(parts['queue_wait'] + parts['pack_wait']) * 1000:.1f} ms" if parts else "-"
        studies.add_row(name, str(r["trials"]), stage or "-", share, ours, waits)
    console.print(studies)


def cmd_workers(args: argparse.Namespace) -> int:
    """List the live workers: Celery's answers on RabbitMQ, local processes when embedded."""
    from rich.console import Console
    from rich.table import Table

    reply = _get(args.url, "/workers")
    if reply is None:
        return 1
    table = Table(
        "worker", "pid", "pool", "active", "cpu", "rss", title=f"{reply['broker']} workers"
    )
    for w in reply["workers"]:
        active = "-" if w["active"] is None else str(w["active"])
        table.add_row(
            w["name"],
            str(w["pid"]),
            str(w["pool"]),
            active,
            _pct(w["cpu_percent"]),
            _mb(w["rss_bytes"]),
        )
    Console().print(table)
    print(f"{len(reply['workers'])} worker(s)")
    return 0


def cmd_config_check(_args: argparse.Namespace) -> int:
    """Validate the settings, the modes and the strategies; exit 1 with the bad one named."""
    from hpod.daemon.service import StartRefused, check_storage

    try:
        settings, modes, strategies = _validated_config()
    except ConfigError as exc:
        print(f"hpod: invalid configuration: {exc}", file=sys.stderr)
        return 1
    try:
        check_storage(settings.optuna_storage_url())
    except StartRefused as exc:
        print(f"hpod: {exc}", file=sys.stderr)
        return 1
    print(
        f"configuration OK: broker {'embedded' if settings.embedded else 'amqp'}, "
        f"storage {redact(settings.optuna_storage_url())}, modes {', '.join(sorted(modes))}, "
        f"{len(strategies)} strategies"
    )
    return 0


def cmd_journal_repair(args: argparse.Namespace) -> int:
    """Rewrite the journal file with its valid operations only; the bad lines and the whole
    original are kept beside it. Refused while a daemon holds the data directory."""
    from hpod.config import checked_settings
    from hpod.daemon.service import StartRefused, lock_data_dir
    from hpod.journal import repair_journal

    try:  # only the settings: a bad modes or strategies file must not block a repair
        settings = checked_settings()
    except ConfigError as exc:
        print(f"hpod: invalid configuration: {exc}", file=sys.stderr)
        return 2
    path = args.path
    if path is None:
        url = settings.optuna_storage_url()
        if not url.startswith("journal://"):
            print("hpod: the storage is not a journal file; give its path", file=sys.stderr)
            return 2
        path = Path(url.removeprefix("journal://"))
    try:
        fd = lock_data_dir(settings.data_dir)
    except StartRefused as exc:
        print(f"hpod: {exc}", file=sys.stderr)
        return 2
    try:
        report = repair_journal(str(path), dry_run=args.dry_run)
    finally:
        os.close(fd)
    for bad in report["bad_lines"]:
        print(f"line {bad['line']} (byte offset {bad['offset']}): {bad['problem']}")
    verb = "would keep" if args.dry_run else "kept"
    print(f"{path}: {verb} {report['kept_lines']} operations, {len(report['bad_lines'])} bad lines")
    if report.get("backup"):
        print(f"original: {report['backup']}\nbad lines: {report['bad_lines_file']}")
    return 0


def _validated_config() -> tuple[Any, dict[str, Any], tuple[Any, ...]]:
    """Settings, modes and strategies (every file the daemon reads at start), or one
    `ConfigError` naming the first bad file and key."""
    from hpod.config import checked_settings
    from hpod.modes import load_modes
    from hpod.policies.strategy.catalog import load_strategies

    return checked_settings(), load_modes(), load_strategies()


def cmd_schema(_args: argparse.Namespace) -> int:
    """Print the JSON Schema of hpod's requests."""
    from hpod.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_objectives(_args: argparse.Namespace) -> int:
    """List the registered objectives with the fidelity, version and keyword arguments each
    declares (see docs/objectives.md). Each is loaded here to read them: one that cannot be
    loaded in this environment is listed with the reason (its workers may still have it)."""
    from hpod.config import load_settings
    from hpod.workers.registry import ObjectiveRegistry

    registry = ObjectiveRegistry(load_settings().objectives)
    rows = [("name", "fidelity", "version", "kwargs")]
    for name in registry.names():
        try:
            rows.append((name, *_objective_traits(registry.get(name))))
        except Exception as exc:  # an objective's import may fail in any way; list it anyway
            rows.append((name, "?", "?", f"cannot load here: {type(exc).__name__}: {exc}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[3]]))
    return 0


def _objective_traits(fn: Any) -> tuple[str, str, str]:
    """An objective's declared fidelity, version and keyword arguments, as shown."""
    from pydantic import BaseModel

    from hpod.workers.evaluation import fidelity_of, version_of

    model = getattr(fn, "hpod_kwargs", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        kwargs = ", ".join(model.model_fields) or "none"
    else:
        kwargs = "any (undeclared)"
    return fidelity_of(fn) or "none", version_of(fn), kwargs


if __name__ == "__main__":
    sys.exit(main())
