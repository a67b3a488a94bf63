"""The long fuzz run of issue 12: thousands of seeded mutations over AMQP and HTTP.

    python bench/fuzz.py --amqp 10000 --http 2000 --seed 1        # or: make fuzz

It starts one daemon (no workers) on a throwaway data directory and a throwaway RabbitMQ vhost
(made with `rabbitmqctl`, so run it as root or the rabbitmq user, and deleted afterwards;
`--amqp-url` uses a vhost of yours instead, whose hpod queues it purges). It sends the exact
bodies of issue 12's findings, then `--http` seeded mutations over HTTP and `--amqp` over AMQP
(tests/fuzz/mutations.py: the same generator as the short suite, tests/fuzz/test_fuzz.py).
Then: a valid request must be answered, /health must be 200, SIGTERM must stop the daemon,
nothing may be left on hpod.requests, and the daemon must restart on the same data directory
and be healthy.

It prints unanswered, 5xx, non-JSON and malformed counts, the daemon's RSS at the start, the
end and after the restart, and writes the figures into the table of docs/hardening.md
(`--no-doc` to skip). Every failing case, with its exact input, goes to `failures.txt` in the
data directory (printed at the end). Exit status 0 only when everything held.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hardening_common import (
    Process,
    campaign,
    commit,
    create_vhost,
    delete_vhost,
    hpod_env,
    mutations,
    update_table,
)

HEADER = [
    "date (UTC)",
    "commit",
    "seed",
    "AMQP sent",
    "HTTP sent",
    "unanswered",
    "5xx",
    "non-JSON",
    "malformed replies",
    "must-refuse accepted",
    "findings not refused",
    "RSS start / end / after restart (MiB)",
    "SIGTERM (s)",
    "restart OK",
    "duration (min)",
]


def purge(url: str) -> None:
    """Empty hpod's queues in the vhost (a vhost given with --amqp-url may hold old ones)."""
    import pika

    from hpod.messaging import DEAD_LETTERS, REQUESTS, RESULTS, TRIALS, retry_queue_name

    names = [REQUESTS, RESULTS, TRIALS, DEAD_LETTERS, *map(retry_queue_name, (REQUESTS, RESULTS))]
    connection = pika.BlockingConnection(pika.URLParameters(url))
    for name in names:
        channel = connection.channel()
        with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):  # not declared yet
            channel.queue_purge(name)
    connection.close()


def set_up(daemon: Process) -> None:
    """Create the studies the seed bodies refer to (mutations.setup_requests)."""
    for request in mutations.setup_requests():
        case = mutations.HttpCase("setup", "POST", "/requests", json.dumps(request).encode())
        status, _ctype, body = campaign.http_call(daemon.url, daemon.token, case)
        if status >= 300:
            raise SystemExit(f"set-up request failed: {status} {body[:300]!r}")


def findings(daemon: Process, url: str) -> list[str]:
    """The findings' exact bodies over HTTP and AMQP; returns the ones not refused."""
    problems = []
    fields = {name: field for name, _body, field in mutations.FINDINGS}
    for case in mutations.http_finding_cases():
        field = fields[case.name.rsplit(" (", 1)[0]]  # /studies names fields as study.…
        try:
            status, ctype, body = campaign.http_call(daemon.url, daemon.token, case)
        except OSError as exc:
            problems.append(f"HTTP {case.name}: no response {exc!r}")
            continue
        ok = status < 500 and ctype.startswith("application/json")
        problem = campaign.refusal_problem(body, None, field) if ok else f"{status} {ctype}"
        if problem:
            problems.append(f"HTTP {case.name}: {problem}")
    cases = [mutations.Case(name, body) for name, body, _f in mutations.FINDINGS]
    _tally, outcomes = campaign.fuzz_amqp(url, cases, timeout=30.0, give_up_after=len(cases))
    for o in outcomes:
        problem = campaign.refusal_problem(o.reply, o.dead_reason, fields[o.case.name])
        if problem:
            problems.append(f"AMQP {o.case.name}: {problem}")
    return problems


def merge(into: campaign.Tally, other: campaign.Tally) -> None:
    """Add `other`'s counts and failures to `into`."""
    into.sent += other.sent
    into.replied += other.replied
    into.dead_lettered += other.dead_lettered
    into.accepted += other.accepted
    into.codes.update(other.codes)
    into.statuses.update(other.statuses)
    into.unanswered += other.unanswered
    into.server_errors += other.server_errors
    into.non_json += other.non_json
    into.malformed += other.malformed
    into.accepted_bad += other.accepted_bad


def run_http(daemon: Process, args: argparse.Namespace) -> campaign.Tally:
    """The HTTP cases, with progress and the daemon's RSS every 500 (growth or a plateau)."""
    cases = [*mutations.http_cases(args.seed, args.http), *mutations.http_odd_cases()]
    total = campaign.Tally()
    for start in range(0, len(cases), 500):
        merge(total, campaign.fuzz_http(daemon.url, daemon.token, cases[start : start + 500]))
        done = f"{min(start + 500, len(cases))}/{len(cases)}"
        print(f"HTTP {done} (RSS {daemon.rss_mib():.0f} MiB): {total.summary()}", flush=True)
    return total


def run_amqp(daemon: Process, url: str, args: argparse.Namespace) -> campaign.Tally:
    """The AMQP cases, with progress and the daemon's RSS every 1000."""
    cases = list(mutations.amqp_cases(args.seed, args.amqp))
    total = campaign.Tally()
    for start in range(0, len(cases), 1000):
        tally, _ = campaign.fuzz_amqp(
            url, cases[start : start + 1000], window=args.window, timeout=args.timeout
        )
        merge(total, tally)
        done = f"{min(start + 1000, len(cases))}/{len(cases)}"
        print(f"AMQP {done} (RSS {daemon.rss_mib():.0f} MiB): {total.summary()}", flush=True)
    return total


def after(daemon: Process, url: str) -> dict[str, Any]:
    """A valid request, /health, SIGTERM, the queue left behind, a restart."""
    valid = {
        "v": 1,
        "type": "study.create",
        "id": "after-fuzz",
        "study": {
            "name": "after-fuzz",
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "budget": {"trials": 3},
            "mode": "balanced",
        },
    }
    reply = campaign.request_over_amqp(url, valid, timeout=60.0)
    out: dict[str, Any] = {
        "valid_answered": reply is not None and json.loads(reply).get("ok") is True,
        "health_after": daemon.health(),
        "rss_end": daemon.rss_mib(),
    }
    code, seconds = daemon.stop()
    out.update(sigterm_code=code, sigterm_seconds=seconds, left_on_queue=campaign.queue_depth(url))
    out["restart_ok"] = daemon.start(wait_healthy=True)
    out["rss_restart"] = daemon.rss_mib()
    daemon.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--amqp", type=int, default=10_000, help="AMQP cases")
    parser.add_argument("--http", type=int, default=2_000, help="HTTP cases")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--amqp-url", help="use this vhost instead of making one")
    parser.add_argument("--window", type=int, default=16, help="AMQP messages outstanding")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds for an answer")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and vhost")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/hardening.md")
    args = parser.parse_args()

    measured = commit()  # the code the daemon runs: taken now, the tree may change meanwhile
    vhost = None if args.amqp_url else f"hpod-fuzz-{args.seed}-{os.getpid()}"
    url = args.amqp_url or create_vhost(vhost or "")
    purge(url)
    data = Path(tempfile.mkdtemp(prefix="hpod-fuzz-"))
    env = hpod_env(data / "data", broker_url=url, local_workers="0", drain_timeout="5")
    daemon = Process(["run", "--no-workers"], env, data / "daemon.log")
    began = time.monotonic()
    try:
        if not daemon.start(wait_healthy=True):
            raise SystemExit(f"the daemon did not start:\n{daemon.log_tail()}")
        set_up(daemon)
        rss_start = daemon.rss_mib()
        not_refused = findings(daemon, url)
        http = run_http(daemon, args)
        amqp = run_amqp(daemon, url, args)
        end = after(daemon, url)
    finally:
        daemon.stop()
    total = campaign.Tally()
    merge(total, http)
    merge(total, amqp)
    duration = time.monotonic() - began
    failures = [*(f"finding not refused: {p}" for p in not_refused), *total.failures()]
    (data / "failures.txt").write_text("\n".join(failures) + "\n")
    restart_ok = (
        end["valid_answered"]
        and end["health_after"] == 200
        and end["sigterm_code"] == 0
        and end["left_on_queue"] == 0
        and end["restart_ok"]
    )
    print(f"\nHTTP: {http.summary()}\nAMQP: {amqp.summary()}")
    print(f"findings not refused: {len(not_refused)}")
    print(
        f"unanswered {len(total.unanswered)}, 5xx {len(total.server_errors)}, non-JSON "
        f"{len(total.non_json)}, malformed {len(total.malformed)}, must-refuse accepted "
        f"{len(total.accepted_bad)}; RSS start "
        f"{rss_start:.0f} MiB, end {end['rss_end']:.0f} MiB, after restart "
        f"{end['rss_restart']:.0f} MiB; after the run: {end}; restart OK: {restart_ok}; "
        f"{duration:.0f} s"
    )
    for line in failures[:50]:
        print("  " + line)
    print(f"all {len(failures)} failures: {data / 'failures.txt'}")
    if not args.no_doc:
        update_table(
            "fuzz",
            HEADER,
            ["commit", "seed", "AMQP sent", "HTTP sent"],
            {
                "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
                "commit": measured,
                "seed": args.seed,
                "AMQP sent": amqp.sent,
                "HTTP sent": http.sent,
                "unanswered": len(total.unanswered),
                "5xx": len(total.server_errors),
                "non-JSON": len(total.non_json),
                "malformed replies": len(total.malformed),
                "must-refuse accepted": len(total.accepted_bad),
                "findings not refused": len(not_refused),
                "RSS start / end / after restart (MiB)": (
                    f"{rss_start:.0f} / {end['rss_end']:.0f} / {end['rss_restart']:.0f}"
                ),
                "SIGTERM (s)": f"{end['sigterm_seconds']:.1f}",
                "restart OK": "yes" if restart_ok else "no",
                "duration (min)": f"{duration / 60:.0f}",
            },
        )
    if not args.keep:
        if vhost:
            delete_vhost(vhost)
        shutil.rmtree(data / "data", ignore_errors=True)
    return 0 if restart_ok and not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
