"""The daemon's web page in a real browser: Debian's Chromium driven by Playwright.

Every page is opened with the network cut off from everything but the daemon (any other
request is aborted and recorded, and the test fails if there was one), and a screenshot of
each page goes to the test-artifacts directory (``$HPOD_TEST_ARTIFACTS``, or
``tests/browser/artifacts/``). Without Chromium or Playwright the tests skip with the reason,
and fail in CI (``HPOD_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from conftest import REQUIRED, Daemon, DaemonFactory, quadratic_spec

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

CHROMIUM = os.environ.get("HPOD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: JavaScript: the number of trial points in the study page's history plot.
HISTORY_POINTS = """() => {
  const div = document.getElementById('plot-history');
  if (!div || !div.data) return -1;
  return div.data.filter((t) => t.meta === 'trials').reduce((n, t) => n + t.x.length, 0);
}"""
#: JavaScript: trial points in the history plot by trace name.
HISTORY_BY_TRACE = """() => Object.fromEntries(document.getElementById('plot-history').data
  .filter((t) => t.meta === 'trials').map((t) => [t.name, t.x.length]))"""


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (HPOD_REQUIRE_SERVICES=1: the browser tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium (Debian's package), shared by this module's tests."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: pip install -e '.[dev]'")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"Chromium is not installed at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots go: $HPOD_TEST_ARTIFACTS, or tests/browser/artifacts/."""
    path = Path(os.environ.get("HPOD_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Tab:
    """A browser page on the daemon, with what it tried to reach elsewhere and its errors."""

    page: Page
    daemon: Daemon
    external: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str) -> Page:
        """Load `path` from the daemon and wait until its scripts ran."""
        self.page.goto(self.daemon.url + path)
        self.page.wait_for_function("() => document.readyState === 'complete'")
        return self.page

    def check_clean(self) -> None:
        """Nothing was requested outside the daemon (nor attempted and stopped by the page's
        Content-Security-Policy), and no script error happened."""
        blocked = self.page.evaluate("() => window.__cspViolations || []")
        assert self.external == [], f"requests outside the daemon: {self.external}"
        assert blocked == [], f"blocked by the Content-Security-Policy: {blocked}"
        assert self.errors == [], f"script errors: {self.errors}"


@pytest.fixture
def tab(browser: Browser) -> Iterator[Callable[[Daemon], Tab]]:
    """Open pages with the network cut off from everything but the daemon."""
    contexts = []

    def factory(daemon: Daemon) -> Tab:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        page = context.new_page()
        opened = Tab(page, daemon)
        origin = urlsplit(daemon.url).netloc

        def guard(route: Route) -> None:
            url = urlsplit(route.request.url)
            if url.scheme in {"http", "https", "ws", "wss"} and url.netloc != origin:
                opened.external.append(route.request.url)
                route.abort()
            else:
                opened.requests.append(url.path)
                route.continue_()

        context.route("**/*", guard)
        # The page's CSP stops a request to another origin before it reaches the network
        # (and the route above): record those attempts too.
        context.add_init_script(
            "window.__cspViolations = [];"
            "document.addEventListener('securitypolicyviolation',"
            " (e) => window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));"
        )
        page.on("pageerror", lambda exc: opened.errors.append(str(exc)))
        page.set_default_timeout(30_000)
        return opened

    yield factory
    for context in contexts:
        context.close()


def _external_study(daemon: Daemon, name: str, trials: int, **extra: Any) -> None:
    spec = quadratic_spec(name, trials=trials, **extra)
    del spec["objective"]
    status, reply = daemon.request("POST", "/studies", spec)
    assert status == 201, reply


def _ask_tell(daemon: Daemon, name: str, state: str = "complete", values: Any = None) -> int:
    status, asked = daemon.request("POST", f"/studies/{name}/ask", {})
    assert status == 200, asked
    trial, params = asked["result"]["trial"], asked["result"]["params"]
    if values is None and state == "complete":
        values = [params["x"] ** 2 + params["y"] ** 2]
    body: dict[str, Any] = {"trial": trial, "state": state}
    if values is not None:
        body["values"] = values
    status, told = daemon.request("POST", f"/studies/{name}/tell", body)
    assert status == 200, told
    return int(trial)


def test_pages_follow_a_running_study(
    start_daemon: DaemonFactory, tab: Callable[[Daemon], Tab], artifacts: Path
) -> None:
    """The overview shows a study created while it is open, and the study page's plot gains
    points as the workers complete trials, until it holds every trial."""
    daemon = start_daemon()
    overview = tab(daemon)
    page = overview.open("/")
    page.wait_for_selector("#live[data-state='live']")
    spec = quadratic_spec("web-live", trials=30, objective_kwargs={"sleep": 0.3}, max_concurrent=1)
    assert daemon.request("POST", "/studies", spec)[0] == 201
    row = page.wait_for_selector("#studies tr[data-study='web-live']")  # from study.created
    assert row is not None
    page.wait_for_function(
        "() => /([1-9][0-9]*) \\/ 30 trials/.test("
        "document.querySelector(\"tr[data-study='web-live'] .progress-col\").textContent)"
    )

    study = tab(daemon)
    spage = study.open("/study/web-live")
    spage.wait_for_function(f"({HISTORY_POINTS})() >= 1")
    first = spage.evaluate(HISTORY_POINTS)
    assert first < 30, "the study finished before the page could watch it"
    spage.wait_for_function(f"({HISTORY_POINTS})() > {first}")  # live: grows with events
    spage.screenshot(path=str(artifacts / "study-running.png"), full_page=True)

    final = daemon.wait_study("web-live", timeout=120)
    assert final["n_trials"] == 30
    spage.wait_for_function(f"({HISTORY_POINTS})() === 30")
    spage.wait_for_selector("#study-state.state-completed")
    assert spage.evaluate(HISTORY_BY_TRACE)["complete"] == 30
    importance = spage.evaluate("() => document.getElementById('plot-importance').data[0].y")
    assert sorted(importance) == ["x", "y"]
    page.wait_for_selector("tr[data-study='web-live'][data-state='completed']")
    assert "30 / 30 trials" in page.inner_text("tr[data-study='web-live'] .progress-col")
    assert page.locator("#activity li[data-event='study.completed']").count() == 1
    page.screenshot(path=str(artifacts / "overview.png"), full_page=True)
    spage.screenshot(path=str(artifacts / "study-completed.png"), full_page=True)
    overview.check_clean()
    study.check_clean()


def test_the_strategy_timeline_grows_with_each_decision(
    start_daemon: DaemonFactory, tab: Callable[[Daemon], Tab], artifacts: Path
) -> None:
    """A study left to the strategy policy: the page's Strategy panel shows the decision at
    the start, then gains a row at each `strategy.chosen`, newest first, with the rewards of
    the windows that ended."""
    daemon = start_daemon()
    # 0.25 s a trial: the study runs ~5 s, so the page's event stream, opened after the
    # study is created, is live before most of its decisions (at 0.1 s a loaded CI machine
    # once saw one strategy.chosen live of five).
    spec = quadratic_spec(
        "web-strategy", trials=40, objective_kwargs={"sleep": 0.25}, max_concurrent=2
    )
    del spec["sampler"]  # leave the sampler to the policy
    spec["mode"] = "fast"  # a decision every 8 trials
    opened = tab(daemon)
    assert daemon.request("POST", "/studies", spec)[0] == 201
    page = opened.open("/study/web-strategy")
    rows = "() => document.querySelectorAll('#strategy-decisions tbody tr').length"
    page.wait_for_function(f"({rows})() >= 1")
    page.wait_for_function(f"({rows})() >= 3", timeout=120_000)  # live, from the events
    daemon.wait_study("web-strategy", timeout=120)
    decisions = daemon.get("/studies/web-strategy")["strategy"]["decisions"]
    page.wait_for_function(f"({rows})() === {len(decisions)}")
    told = page.evaluate(
        "() => [...document.querySelectorAll('#strategy-decisions tbody tr td:first-child')]"
        ".map((td) => Number(td.textContent))"
    )
    assert told == [d["told"] for d in reversed(decisions)]
    assert decisions[-1]["strategy"] in page.inner_text("#strategy-now")
    assert page.locator("#activity li[data-event='strategy.chosen']").count() >= 2
    page.screenshot(path=str(artifacts / "study-strategy.png"), full_page=True)
    opened.check_clean()


def test_switching_the_mode_needs_the_token_and_is_published(
    start_daemon: DaemonFactory, tab: Callable[[Daemon], Tab], artifacts: Path
) -> None:
    """Without the token the page's mode switch is refused with 401 and says so; with it the
    mode changes in the daemon and the mode.changed event reaches the page over /events."""
    daemon = start_daemon()
    spec = quadratic_spec("web-mode", trials=200, objective_kwargs={"sleep": 0.2}, max_concurrent=1)
    assert daemon.request("POST", "/studies", spec)[0] == 201
    opened = tab(daemon)
    page = opened.open("/study/web-mode")
    page.wait_for_selector("#live[data-state='live']")
    page.wait_for_selector("#study-mode:text('balanced')")

    page.select_option("#mode-select", "fast")
    page.click("#mode-set")
    message = page.wait_for_selector("#action-message.error")
    assert message is not None and "401" in message.inner_text()
    assert "API token" in message.inner_text()
    assert daemon.get("/studies/web-mode")["mode"] == "balanced"

    page.fill("#token-input", daemon.token)
    page.click("#token-save")
    page.wait_for_selector("#token-forget:visible")
    page.select_option("#mode-select", "fast")
    page.click("#mode-set")
    page.wait_for_selector("#action-message.ok:text('Mode switched to fast')")
    assert daemon.get("/studies/web-mode")["mode"] == "fast"
    event = page.wait_for_selector("#activity li[data-event='mode.changed']")
    assert event is not None and "mode changed to fast" in event.inner_text()
    page.wait_for_selector("#study-mode:text('fast')")
    page.screenshot(path=str(artifacts / "study-mode-switched.png"), full_page=True)

    # Pause, resume and a budget change: applied in the daemon, visible on the page at once.
    page.click("#study-pause")
    page.wait_for_selector("#action-message.ok:text('Pause requested')")
    page.wait_for_selector("#study-state.state-paused")
    assert daemon.get("/studies/web-mode")["state"] == "paused"
    assert page.is_disabled("#study-pause") and page.is_enabled("#study-resume")
    page.click("#study-resume")
    page.wait_for_selector("#action-message.ok:text('Resume requested')")
    page.wait_for_selector("#study-state.state-running")
    new_budget = daemon.get("/studies/web-mode")["n_trials"] + 40
    page.fill("#budget-trials", str(new_budget))
    page.click("#budget-set")
    page.wait_for_selector(f"#action-message.ok:text('Budget changed to {new_budget} trials')")
    assert daemon.get("/studies/web-mode")["budget"]["trials"] == new_budget
    progress = "document.getElementById('card-progress').textContent"
    page.wait_for_function(f"() => {progress}.includes('/ {new_budget} trials')")
    # The efficiency panel and the best-against-compute plot follow the study.
    page.wait_for_function(
        "() => document.getElementById('eff-compute').textContent.includes('CPU')"
    )
    # hpod's own time per trial, apart from the waits for workers (issue 16, item 1).
    page.wait_for_function(
        "() => document.getElementById('eff-overhead').textContent.includes('transport')"
    )
    assert (page.text_content("#eff-evaluation") or "x")[0].isdigit()
    page.wait_for_function(
        "() => (document.getElementById('plot-compute').data || []).some((t) => t.x.length > 0)"
    )

    # The token is kept for the tab (sessionStorage), not asked again after a reload.
    opened.check_clean()
    page.reload()
    page.wait_for_selector("#token-forget:visible")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#study-stop")
    page.wait_for_selector("#action-message.ok:text('Stop requested')")
    assert daemon.wait_study("web-mode", timeout=60)["state"] == "stopped"
    page.wait_for_selector("#study-state.state-stopped")
    opened.check_clean()


def test_pruned_failed_and_pareto_front(
    start_daemon: DaemonFactory, tab: Callable[[Daemon], Tab], artifacts: Path
) -> None:
    """Trials told from outside appear live with pruned and failed marked apart, importances
    appear after five complete trials, and a two-objective study shows its Pareto front."""
    daemon = start_daemon("--no-workers")
    _external_study(daemon, "web-states", trials=12)
    for _ in range(6):
        _ask_tell(daemon, "web-states")
    opened = tab(daemon)
    page = opened.open("/study/web-states")
    page.wait_for_function(f"({HISTORY_POINTS})() === 6")
    page.wait_for_function(
        "() => (document.getElementById('plot-importance').data || []).length === 1"
    )
    for state in ("pruned", "pruned", "failed", "failed", "complete", "complete"):
        _ask_tell(daemon, "web-states", state)
    page.wait_for_function(f"({HISTORY_POINTS})() === 12")
    counts = page.evaluate(HISTORY_BY_TRACE)
    assert counts == {"complete": 8, "pruned": 0, "pruned (no value)": 2, "failed": 2}
    assert page.locator("#trials tbody tr.state-fail").count() == 2
    assert page.locator("#trials tbody tr.state-pruned").count() == 2
    page.screenshot(path=str(artifacts / "study-states.png"), full_page=True)

    trials = daemon.get("/studies/web-states/trials")
    assert [t["number"] for t in trials["trials"]] == list(range(12))
    assert sorted({t["state"] for t in trials["trials"]}) == ["complete", "fail", "pruned"]
    assert daemon.get("/studies/web-states/trials?from=10")["trials"][0]["number"] == 10
    importance = daemon.get("/studies/web-states/importance")
    assert importance["ready"] and set(importance["importances"]) == {"x", "y"}
    assert daemon.request("GET", "/studies/nope/trials", token=None)[0] == 404

    _external_study(daemon, "web-pareto", trials=8, directions=["minimize", "maximize"])
    for _ in range(8):
        asked = daemon.request("POST", "/studies/web-pareto/ask", {})[1]["result"]
        x, y = asked["params"]["x"], asked["params"]["y"]
        values = [x * x, y]
        daemon.request(
            "POST", "/studies/web-pareto/tell", {"trial": asked["trial"], "values": values}
        )
    front = daemon.wait_study("web-pareto", timeout=30)["best_trials"]
    pareto = tab(daemon)
    ppage = pareto.open("/study/web-pareto")
    ppage.wait_for_selector("#pareto-panel:visible")
    ppage.wait_for_function(
        "() => (document.getElementById('plot-pareto').data || []).length === 2"
    )
    shown = ppage.evaluate(
        "() => Object.fromEntries(document.getElementById('plot-pareto').data"
        ".map((t) => [t.meta, t.x.length]))"
    )
    assert shown == {"front": len(front), "dominated": 8 - len(front)}
    ppage.screenshot(path=str(artifacts / "study-pareto.png"), full_page=True)
    opened.check_clean()
    pareto.check_clean()


def test_a_burst_of_events_is_coalesced_and_the_page_stays_bounded(
    start_daemon: DaemonFactory, tab: Callable[[Daemon], Tab]
) -> None:
    """Hundreds of trial events in a few seconds cause a handful of reads, not one per
    event, and the page's activity log stays bounded; the page still shows every trial."""
    daemon = start_daemon("--no-workers")
    _external_study(daemon, "web-burst", trials=300)
    opened = tab(daemon)
    page = opened.open("/study/web-burst")
    page.wait_for_selector("#live[data-state='live']")
    overview = tab(daemon)
    overview.open("/").wait_for_selector("#live[data-state='live']")
    # The trials are told from a thread: Playwright's sync API answers the page's routed
    # requests only while this thread waits in a Playwright call.
    started = time.monotonic()
    teller = threading.Thread(target=lambda: [_ask_tell(daemon, "web-burst") for _ in range(300)])
    teller.start()
    page.wait_for_function(f"({HISTORY_POINTS})() === 300", timeout=90_000)
    seconds = time.monotonic() - started
    teller.join()
    reads = [p for p in opened.requests if p.startswith("/studies/web-burst/trials")]
    # One coalesced refresh a second at most (plus the first read and a trailing one).
    assert 3 <= len(reads) <= seconds + 3, (len(reads), seconds)
    assert page.locator("#activity li").count() == 100
    overview.page.wait_for_selector("tr[data-study='web-burst'][data-state='completed']")
    status_reads = [p for p in overview.requests if p == "/studies/web-burst"]
    assert len(status_reads) <= seconds + 3, (len(status_reads), seconds)
    assert page.evaluate("() => document.querySelectorAll('#trials tbody tr').length") == 100
    opened.check_clean()
    overview.check_clean()


def test_intermediate_values_of_a_reporting_objective(
    start_daemon: DaemonFactory, tab: Callable[[Daemon], Tab], artifacts: Path
) -> None:
    """A study whose objective reports every epoch (the PyTorch MLP) shows one curve per
    trial in the intermediate-values plot."""
    daemon = start_daemon()
    spec = {
        "name": "web-mlp",
        "objective": "mlp_digits",
        "objective_kwargs": {"epochs": 4},
        "space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "hidden": {"type": "int", "low": 16, "high": 128, "log": True},
            "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
        },
        "budget": {"trials": 10},
        "max_concurrent": 2,
        "sampler": {"name": "random", "seed": 3},
        "pruner": {"name": "median", "n_startup_trials": 3},
    }
    assert daemon.request("POST", "/studies", spec)[0] == 201
    opened = tab(daemon)
    page = opened.open("/study/web-mlp")
    daemon.wait_study("web-mlp", timeout=240)
    page.wait_for_function(f"({HISTORY_POINTS})() === 10")
    curves = page.evaluate(
        "() => document.getElementById('plot-intermediate').data.map((t) => t.x.length)"
    )
    assert len(curves) == 10 and all(1 <= n <= 4 for n in curves)
    assert 4 in curves  # at least one trial ran every epoch
    page.wait_for_function(
        "() => (document.getElementById('plot-parallel').data || []).length === 1"
    )
    page.screenshot(path=str(artifacts / "study-intermediate.png"), full_page=True)
    opened.check_clean()


def test_workers_panels_hide_when_the_daemon_lacks_them(
    start_daemon: DaemonFactory, tab: Callable[[Daemon], Tab], artifacts: Path
) -> None:
    """The overview shows the workers and resources panels when /doctor and /workers
    answer, and hides them (without breaking) on a daemon where they are 404."""
    daemon = start_daemon("--no-workers")
    opened = tab(daemon)
    if daemon.request("GET", "/doctor", token=None)[0] == 200:
        page = opened.open("/")
        page.wait_for_selector("[data-panel='doctor']:visible")
        page.wait_for_selector("section[data-panel='workers']:visible")
    missing = tab(daemon)
    for route in ("**/doctor", "**/workers"):
        missing.page.route(
            route, lambda r: r.fulfill(status=404, body="not found", content_type="text/plain")
        )
    page = missing.open("/")
    page.wait_for_selector("#live[data-state='live']")
    page.wait_for_function("() => document.getElementById('card-running').textContent === '0'")
    page.wait_for_timeout(500)
    assert page.locator("[data-panel='doctor']:visible").count() == 0
    assert page.locator("section[data-panel='workers']:visible").count() == 0
    assert page.is_visible("#no-studies")
    page.screenshot(path=str(artifacts / "overview-without-doctor.png"), full_page=True)
    opened.check_clean()
    missing.check_clean()


def test_pages_and_plotly_are_served_by_the_daemon(start_daemon: DaemonFactory) -> None:
    """The pages need no token, carry a same-origin Content-Security-Policy, Plotly.js comes
    from the installed plotly package, unknown studies and files are 404, and an open event
    stream does not delay the daemon's shutdown."""
    daemon = start_daemon("--no-workers")

    def fetch(path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(daemon.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    status, headers, body = fetch("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert b'"modes": [' in body and b"mode.set" in body
    spec = importlib.util.find_spec("plotly")
    assert spec is not None and spec.submodule_search_locations
    bundled = Path(next(iter(spec.submodule_search_locations))) / "package_data/plotly.min.js"
    status, headers, body = fetch("/static/plotly.min.js")
    assert status == 200 and body == bundled.read_bytes()
    status, headers, _ = fetch("/static/plotly.min.js", **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert fetch("/static/common.js")[0] == 200
    assert fetch("/static/study.html")[0] == 404  # shells are pages, not static files
    assert fetch("/static/%2E%2E%2Fdata.py")[0] == 404
    assert fetch("/study/nope")[0] == 404
    assert fetch("/studies/nope/importance")[0] == 404

    # An open event stream does not hold up the daemon's shutdown.
    stream = urllib.request.urlopen(daemon.url + "/events", timeout=30)
    assert stream.readline().startswith(b"retry:")
    started = time.monotonic()
    daemon.stop()
    assert time.monotonic() - started < 15
    assert daemon.proc is not None and daemon.proc.returncode == 0
    stream.close()


def test_the_study_page_shows_what_was_transferred(
    start_daemon: DaemonFactory, tab: Callable[[Daemon], Tab]
) -> None:
    """A study warm-started from a finished one shows a Transfer panel: the source (linked),
    its similarity, what it gave and its agreement; a study without transfer shows none."""
    daemon = start_daemon()
    for seed, (name, offset) in enumerate((("web-past", 0.5), ("web-warm", 0.6))):
        spec = quadratic_spec(name, trials=16, objective_kwargs={"offset": offset}, mode="thorough")
        spec["sampler"]["seed"] = seed  # other seeds: the warm study's own trials differ
        assert daemon.request("POST", "/studies", spec)[0] == 201
        daemon.wait_study(name)
    opened = tab(daemon)
    page = opened.open("/study/web-warm")
    page.wait_for_selector("#transfer:not([hidden]) #transfer-sources tbody tr")
    row = page.locator("#transfer-sources tbody tr").first
    assert row.locator("a").inner_text() == "web-past"
    assert row.locator("td").nth(2).inner_text() == "4"  # a quarter of 16
    assert "4 transferred" in page.locator("#transfer-now").inner_text()
    marked = page.locator("#trials tbody .transferred")
    assert marked.count() == 4 and marked.first.inner_text().strip() == "from web-past"
    rows = daemon.get("/studies/web-warm/trials")["trials"]
    assert sum(row["transferred"] == "web-past" for row in rows) == 4
    page = opened.open("/study/web-past")
    page.wait_for_selector("#study-state.state-completed")
    assert page.locator("#transfer").is_hidden()
    opened.check_clean()
