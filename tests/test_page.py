"""The live page (issue 16) in a real headless browser: Debian's chromium, driven through
Playwright's PyPI wheel with ``executable_path`` (``scripts/install-chromium`` installs it;
``playwright install`` is never run).

Real runs: the crash-once example under ``elastiscope run`` (both workers, the failure with its
message, the restart, the success, all without a reload, and not one request beyond the agent's
own address), and the hang of issue 14 (the suspect rank and its stack). The token, the layouts
and the keyboard are checked against a real endpoint serving a made-up job, which is quick.

Screenshots are saved under ``$ELASTISCOPE_PAGE_SCREENSHOTS`` or a temporary folder; the path
is printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from helpers.polling import wait_until
from telemetry.endpoint import EndpointError, start_endpoint
from telemetry.events import Event, EventSource
from telemetry.sinks.memory import MemorySink

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "examples" / "train_ddp.py"
HANG = Path(__file__).resolve().parent / "faults" / "hang_in_user_code.py"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAGE_FILES = ("index.html", "page.css", "page.js")
TOKEN = "s3cret-token-for-the-page"
WAIT_MS = 90_000  # a step of a real run seen on the page, on a busy 2-core machine

pytestmark = pytest.mark.timeout(300)

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - playwright is in the dev extra
    sync_playwright = None

needs_browser = pytest.mark.skipif(
    sync_playwright is None or CHROMIUM is None,
    reason="the browser tests need playwright (dev extra) and Debian's chromium "
           "(scripts/install-chromium)",
)


# ---- the page's files (no browser) ------------------------------------------------------------


def test_page_files_ship_in_the_package_and_stay_small():
    folder = resources.files("telemetry.endpoint").joinpath("page")
    sizes = {name: len(folder.joinpath(name).read_bytes()) for name in PAGE_FILES}
    assert all(sizes.values()), sizes
    assert sum(sizes.values()) < 100_000, sizes
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"telemetry.endpoint" = ["page/*.html", "page/*.css", "page/*.js"]' in pyproject


def test_a_built_wheel_carries_the_page(tmp_path):
    # Built from a copy, so setuptools' build folders stay out of the source tree.
    source = tmp_path / "src"
    for name in ("agent", "telemetry", "elastiscope"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"telemetry/endpoint/page/{name}" for name in PAGE_FILES} <= names, sorted(names)


def test_page_loads_nothing_from_elsewhere_and_runs_no_inline_script():
    folder = resources.files("telemetry.endpoint").joinpath("page")
    html = folder.joinpath("index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    for name in PAGE_FILES:
        text = folder.joinpath(name).read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), name
        assert "@import" not in text and "url(http" not in text, name


def test_page_and_docs_answer_with_a_strict_content_security_policy(fake_job):
    for path in ("/", "/page.js", "/page.css", "/docs", "/redoc"):
        response = httpx.get(fake_job.url + path, timeout=10)
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy, path
        assert "unsafe-inline" not in policy, path
    docs = httpx.get(fake_job.url + "/docs", timeout=10).text
    assert "Interactive API docs are off" in docs and 'href="openapi.json"' in docs
    assert "cdn" not in docs.lower().replace("public cdn", "")


def test_page_is_open_but_data_routes_keep_the_token(fake_job_with_token):
    url = fake_job_with_token.url
    assert httpx.get(url + "/", timeout=10).status_code == 200
    for path in ("/status", "/events", "/events/stream", "/metrics"):
        assert httpx.get(url + path, timeout=10).status_code == 401, path


# ---- a made-up job on a real endpoint ---------------------------------------------------------


class FakeJob:
    """A real endpoint (uvicorn on 127.0.0.1) serving a made-up two-worker job."""

    def __init__(self, token: str | None = None, port: int = 0) -> None:
        self.ring = MemorySink()
        self.server = start_endpoint(self.status, self.ring, port=port, token=token)
        assert self.server.wait_serving(30), self.server.error
        self.url = self.server.url

    def status(self) -> dict:
        now = time.time()
        workers = [
            {"local_rank": r, "global_rank": r, "role_rank": r, "pid": 4000 + r, "state": "HEALTHY",
             "start_time": now - 60, "exit_code": None, "cpu_seconds": 42.5 + r, "rss_bytes": (300 + r) << 20,
             "straggler": r == 1, "stalled": False,
             "progress": {"reporting": True, "steps": 120 + r, "global_step": 1120, "last_step_time": now - 2,
                          "last_step_duration": 0.25}}
            for r in range(2)
        ]
        return {"run_id": "page-demo", "role": "trainer", "state": "HEALTHY", "restarts_used": 1,
                "remaining_restarts": 2, "max_restarts": 3, "group_rank": 0, "group_world_size": 2,
                "world_size": 4, "workers": workers, "hostname": "node-a.example", "time": now,
                "event_log": "/var/log/elastiscope/run.jsonl", "goodput_ratio": 0.873,
                "peers": [{"group_rank": 1, "hostname": "node-b.example", "url": "http://node-b.example:9400"}]}

    def emit(self, name: str, source: str = "AGENT", **metadata) -> None:
        self.ring.emit(Event(name, EventSource(source), int(time.time() * 1000), metadata))

    def stop(self) -> None:
        self.server.stop(timeout=5)


@pytest.fixture
def fake_job():
    job = FakeJob()
    job.emit("elastiscope.worker.failed", "WORKER", global_rank=1, exit_code=1,
             error_message="RuntimeError: CUDA error: an illegal memory access", root_cause=True)
    job.emit("elastiscope.agent.restart", reason="failure", remaining_restarts=2)
    yield job
    job.stop()


@pytest.fixture
def fake_job_with_token():
    job = FakeJob(token=TOKEN)
    yield job
    job.stop()


# ---- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None or CHROMIUM is None:
        pytest.skip("the browser tests need playwright (dev extra) and Debian's chromium "
                    "(scripts/install-chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = os.environ.get("ELASTISCOPE_PAGE_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("page-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the live page: {path}")
    return path


class Visit:
    """One browser tab on the agent's page: every request recorded, any request to another
    address refused and listed, script errors collected."""

    def __init__(self, browser, url: str, **context) -> None:
        self.origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.requests: list[tuple[str, dict]] = []
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.page.route("**/*", self._route)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # The Content-Security-Policy refusing something the page tried is a bug of the page.
        self.page.on("console", lambda m: "Refused to" in m.text and self.errors.append(m.text))
        self.page.goto(url + "/")
        # A reload would lose this: the page must have changed without one.
        self.page.evaluate("window.__notReloaded = true")

    def _route(self, route) -> None:
        request = route.request
        self.requests.append((request.url, request.headers))
        if "{0.scheme}://{0.netloc}".format(urlsplit(request.url)) != self.origin:
            self.foreign.append(request.url)
            route.abort()
        else:
            route.continue_()

    def check_clean(self) -> None:
        assert self.foreign == [], f"requests beyond the agent's address: {self.foreign}"
        assert self.errors == [], self.errors
        assert self.page.evaluate("window.__notReloaded === true"), "the page was reloaded"
        assert self.page.evaluate("performance.getEntriesByType('navigation').length") == 1

    def event(self, name: str):
        return self.page.locator(f"#timeline li[data-name='{name}']")

    def row(self, rank: int):
        return self.page.locator(f"#workers tbody tr[data-rank='{rank}']")

    def shoot(self, path: Path) -> None:
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot {path}")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visits(browser):
    opened: list[Visit] = []

    def visit(url: str, **context) -> Visit:
        v = Visit(browser, url, **context)
        opened.append(v)
        return v

    yield visit
    for v in opened:
        v.close()


# ---- with the made-up job ---------------------------------------------------------------------


@needs_browser
def test_layouts_light_and_dark_at_desktop_and_phone_width(fake_job, visits, screenshots):
    sizes = {"1366x768": {"width": 1366, "height": 768}, "390x844": {"width": 390, "height": 844}}
    for scheme in ("light", "dark"):
        for size_name, viewport in sizes.items():
            v = visits(fake_job.url, viewport=viewport, color_scheme=scheme)
            expect(v.row(1)).to_contain_text("straggler")
            expect(v.event("elastiscope.worker.failed")).to_contain_text("illegal memory access")
            expect(v.page.locator("#connection")).to_have_text("live")
            expect(v.page.locator("#peers a")).to_have_attribute("href", "http://node-b.example:9400/")
            # Nothing spills sideways at phone width: only the workers' table scrolls, inside its box.
            assert v.page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
            v.shoot(screenshots / f"page-{scheme}-{size_name}.png")
            v.check_clean()


@needs_browser
def test_states_are_told_in_words_and_the_page_is_keyboard_usable(fake_job, visits):
    v = visits(fake_job.url, viewport={"width": 1366, "height": 768})
    expect(v.row(0)).to_contain_text("HEALTHY")
    expect(v.event("elastiscope.worker.failed")).to_contain_text("FAILED")
    # Tab to rank 1's stack button and press Enter: the stacks panel opens (503 here: the
    # made-up job has no stacks provider, which the panel says in words).
    for _ in range(30):
        v.page.keyboard.press("Tab")
        if v.page.evaluate("document.activeElement.getAttribute('aria-label')") == "Show the stack of rank 1":
            break
    else:
        pytest.fail("the stack button of rank 1 is not reachable with Tab")
    outline = v.page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "no visible focus"
    v.page.keyboard.press("Enter")
    expect(v.page.locator("#stacks")).to_be_visible()
    expect(v.page.locator("#stacks-summary")).to_contain_text("stacks unavailable")
    v.check_clean()


@needs_browser
def test_events_arrive_live_and_refresh_the_status(fake_job, visits):
    v = visits(fake_job.url)
    expect(v.page.locator("#connection")).to_have_text("live")
    fake_job.emit("elastiscope.agent.run_end", state="SUCCEEDED", goodput_ratio=0.9)
    expect(v.event("elastiscope.agent.run_end")).to_contain_text("run ended: SUCCEEDED")
    v.check_clean()


@needs_browser
def test_page_follows_a_new_agent_at_the_same_address_without_a_reload(fake_job, visits):
    v = visits(fake_job.url)
    expect(v.event("elastiscope.agent.restart")).to_have_count(1)
    port = fake_job.server.port
    fake_job.stop()
    expect(v.page.locator("#connection")).to_contain_text("unreachable")
    again = wait_until(lambda: _try(lambda: FakeJob(port=port)), 30, f"port {port} to be free again")
    try:
        again.emit("elastiscope.agent.run_start", program="again.py", local_world_size=2)
        expect(v.event("elastiscope.agent.run_start")).to_contain_text("again.py", timeout=30_000)
        expect(v.page.locator("#connection")).to_have_text("live")
        v.check_clean()
    finally:
        again.stop()


def _try(make):
    try:
        return make()
    except (OSError, EndpointError):  # the old server's socket is still closing
        return None


@needs_browser
def test_token_is_asked_once_sent_in_a_header_and_never_in_an_address(fake_job_with_token, visits):
    job = fake_job_with_token
    v = visits(job.url)
    expect(v.page.locator("#login")).to_be_visible()
    v.page.fill("#token", "wrong")
    v.page.press("#token", "Enter")
    expect(v.page.locator("#login-error")).to_contain_text("not accepted")
    v.page.fill("#token", TOKEN)
    v.page.click("text=Use token")
    expect(v.row(1)).to_contain_text("HEALTHY")
    expect(v.page.locator("#connection")).to_have_text("live")
    job.emit("elastiscope.worker.failed", "WORKER", global_rank=0, exit_code=3, error_message="boom")
    expect(v.event("elastiscope.worker.failed")).to_contain_text("boom")
    # Kept for the tab: a reload needs no second entry.
    v.page.reload()
    expect(v.row(1)).to_contain_text("HEALTHY")
    expect(v.page.locator("#login")).to_be_hidden()
    assert all(TOKEN not in url for url, _ in v.requests), [u for u, _ in v.requests]
    data = [(url, h) for url, h in v.requests if urlsplit(url).path in ("/status", "/events", "/events/stream")]
    authorised = [url for url, h in data if h.get("authorization") == f"Bearer {TOKEN}"]
    assert any(urlsplit(u).path == "/events/stream" for u in authorised), data
    assert v.foreign == [] and v.errors == []


# ---- real runs --------------------------------------------------------------------------------


class AgentRun:
    """``python -m agent run`` (``elastiscope run``) in a subprocess, its endpoint read from the
    event log's ``elastiscope.endpoint.started``."""

    def __init__(self, tmp_path: Path, agent_flags: list[str], program: list[str], env: dict) -> None:
        self.event_log = tmp_path / "events.jsonl"
        self.stderr_path = tmp_path / "stderr.txt"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ELASTISCOPE_")}
        command = [sys.executable, "-m", "agent", "run", *agent_flags, "--metrics-port", "0",
                   "--event-log", str(self.event_log), *program]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(command, env={**clean, **env}, stdout=subprocess.DEVNULL,
                                         stderr=err, cwd=str(tmp_path))
        self.url = wait_until(self._endpoint_url, 120, self.explain)

    def _endpoint_url(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the agent ended before its endpoint started: {self.explain()}")
        if not self.event_log.exists():
            return None
        for line in self.event_log.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("name") == "elastiscope.endpoint.started":
                return event["metadata"]["url"]
        return None

    def explain(self) -> str:
        text = self.stderr_path.read_text() if self.stderr_path.exists() else ""
        return "stderr tail:\n" + "\n".join(text.splitlines()[-30:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@needs_browser
def test_crash_once_run_seen_live_without_a_reload_and_nothing_from_elsewhere(tmp_path, visits, screenshots):
    # Rank 1 raises at step 4 of the first attempt; steps are slowed so that the page, opened
    # as soon as the endpoint is announced, sees both workers running before that.
    run = AgentRun(
        tmp_path,
        ["--nproc-per-node", "2", "--max-restarts", "1", "--metrics-linger", "120"],
        [str(TRAIN), "--crash-once-rank", "1", "--crash-at-step", "4", "--steps", "8",
         "--checkpoint-every", "2", "--samples", "512", "--log-every", "4", "--step-delay", "0.3",
         "--checkpoint-dir", str(tmp_path / "ckpt")],
        {},
    )
    try:
        # One scrape during the run: the agent then keeps its endpoint up after the end until
        # the next one (--metrics-linger), so the page can read the final state.
        assert httpx.get(run.url + "/metrics", timeout=30).status_code == 200
        v = visits(run.url, viewport={"width": 1366, "height": 768})
        for rank in (0, 1):
            expect(v.row(rank)).to_contain_text("HEALTHY", timeout=WAIT_MS)
        failed = v.event("elastiscope.worker.failed")
        expect(failed).to_contain_text("injected crash on rank 1 at step 4", timeout=WAIT_MS)
        expect(failed).to_contain_text("FAILED")
        expect(v.event("elastiscope.agent.restart")).to_contain_text("restarting the workers (failure)",
                                                                     timeout=WAIT_MS)
        expect(v.event("elastiscope.agent.run_end")).to_contain_text("run ended: SUCCEEDED", timeout=WAIT_MS)
        expect(v.page.locator("#state")).to_contain_text("SUCCEEDED", timeout=WAIT_MS)
        expect(v.page.locator("#restarts")).to_contain_text("1 used, 0 left of 1")
        for rank in (0, 1):
            expect(v.row(rank)).to_contain_text("SUCCEEDED")
        expect(v.page.locator("#event-log")).to_contain_text(str(run.event_log))
        v.shoot(screenshots / "crash-once-1366x768.png")
        v.check_clean()
        httpx.get(run.url + "/metrics", timeout=30)  # the scrape the linger waits for
        assert run.proc.wait(120) == 0, run.explain()
    finally:
        run.stop()


@needs_browser
def test_stall_shows_the_suspect_rank_and_its_stack(tmp_path, visits, screenshots):
    (tmp_path / "ckpt").mkdir()
    run = AgentRun(
        tmp_path,
        ["--nproc-per-node", "2", "--stall-timeout", "5", "--on-stall", "report"],
        [str(HANG)],
        {"CHECKPOINT_DIR": str(tmp_path / "ckpt"), "STEPS": "10", "HANG_AT_STEP": "2"},
    )
    try:
        v = visits(run.url, viewport={"width": 1366, "height": 768})
        stalled = v.event("elastiscope.worker.stalled")
        expect(stalled).to_contain_text("suspect rank 1", timeout=WAIT_MS)
        expect(v.row(1)).to_contain_text("stalled", timeout=WAIT_MS)
        # The stacks kept when the stall was found, one click from the timeline.
        stalled.get_by_role("button", name="Show stacks").click()
        suspect = v.page.locator("#stacks-body .rank-stack[data-rank='1']")
        expect(suspect).to_contain_text("suspect")
        expect(suspect).to_contain_text("sleep_forever")
        expect(v.page.locator("#stacks-body .rank-stack[data-rank='0']")).to_contain_text("all_reduce")
        v.shoot(screenshots / "stall-kept-stacks-1366x768.png")
        # And read now, from the worker's row.
        v.row(1).get_by_role("button").click()
        expect(v.page.locator("#stacks-summary")).to_contain_text("read now", timeout=WAIT_MS)
        expect(suspect).to_contain_text("sleep_forever")
        v.shoot(screenshots / "stall-live-stacks-1366x768.png")
        v.check_clean()
    finally:
        run.stop()


@pytest.mark.slow
@needs_browser
def test_two_nodes_each_page_links_to_the_other(tmp_path, visits):
    from cluster import FAULTS, Cluster

    out = tmp_path / "out"
    with Cluster(tmp_path, script=FAULTS / "sleeper.py", script_args=["--out", str(out), "--seconds", "60"],
                 nnodes="2:2", max_restarts=0) as job:
        nodes = [job.start(), job.start()]

        def peers_of(node):
            status = node.status()
            return status and status.get("peers")

        for node in nodes:
            wait_until(lambda: peers_of(node), 120, lambda: f"{node.name} to know its peer\n{job.diagnostics()}")
        for node, other in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
            [peer] = peers_of(node)
            assert peer["url"] == other.url and peer["group_rank"] == other.status()["group_rank"]
        v = visits(nodes[0].url)
        expect(v.page.locator("#peers a")).to_have_attribute("href", nodes[1].url + "/", timeout=WAIT_MS)
        v.check_clean()
        for node in nodes:
            node.send(signal.SIGTERM)
        job.wait_all(60)
