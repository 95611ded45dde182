"""The live page's first paint and weight, on loopback, during a real training run.

Starts ``elastiscope run`` on examples/train_ddp.py (two workers, endpoint on 127.0.0.1), and
once its workers run, loads the page ``--loads`` times in headless chromium (Debian's, through
Playwright; each load in a fresh browser context, so nothing is cached). Per load: first paint
and first contentful paint (the browser's paint timing), DOMContentLoaded, and the time until
the page shows live data (the workers' rows drawn and the event stream open), all measured from
the navigation's start. Reported: medians and the slowest, and the bytes of the page's own files
(``/``, ``/page.css``, ``/page.js``) and of its first data reads (``/status``, ``/events``).

    python bench/page.py [--loads 10] [--json]

With ``--json`` one JSON object is printed on stdout, nothing else. Exit status 0 when every
load showed live data, 1 otherwise; 2 when chromium or playwright is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TRAIN_DDP = REPO / "examples" / "train_ddp.py"
PAGE_PATHS = ("/", "/page.css", "/page.js")
DATA_PATHS = ("/status", "/events")
START_DEADLINE = 180.0  # seconds for the agent and two workers (importing torch) on a busy machine


def start_run(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A long training run under ``elastiscope run``; its endpoint's URL once workers run."""
    event_log = workdir / "events.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELASTISCOPE_")}
    command = [sys.executable, "-m", "agent", "run", "--nproc-per-node", "2", "--metrics-port", "0",
               "--event-log", str(event_log), str(TRAIN_DDP), "--steps", "100000", "--step-delay", "0.01",
               "--log-every", "100000", "--checkpoint-dir", str(workdir / "ckpt")]
    proc = subprocess.Popen(command, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL,
                            stderr=open(workdir / "stderr.txt", "wb"))
    deadline = time.monotonic() + START_DEADLINE
    url, healthy = None, False
    while time.monotonic() < deadline and proc.poll() is None and not (url and healthy):
        for line in event_log.read_text().splitlines() if event_log.exists() else ():
            event = json.loads(line) if line.endswith("}") else {}
            if event.get("name") == "elastiscope.endpoint.started":
                url = event["metadata"]["url"]
            if event.get("name") == "elastiscope.agent.first_step":
                healthy = True
        time.sleep(0.2)
    if not (url and healthy):
        proc.kill()
        raise SystemExit(f"page bench: the run did not start training:\n{(workdir / 'stderr.txt').read_text()[-2000:]}")
    return proc, url


def load_once(browser, url: str) -> dict:
    """One cold load of the page: its timings (ms) and the bytes of every response."""
    from playwright.sync_api import expect  # the dev extra: only when measuring
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    sizes: dict[str, int] = {}

    def on_response(response) -> None:
        path = urlsplit(response.url).path
        if path in PAGE_PATHS or path in DATA_PATHS:
            try:
                sizes.setdefault(path, len(response.body()))
            except Exception:  # a stream has no body to read
                pass

    page.on("response", on_response)
    page.goto(url + "/")
    page.wait_for_selector("#workers tbody tr[data-rank]", timeout=60_000)
    expect(page.locator("#connection")).to_have_text("live", timeout=60_000)
    timing = page.evaluate("""() => {
        const paint = Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]));
        const nav = performance.getEntriesByType('navigation')[0];
        return {first_paint_ms: paint['first-paint'], first_contentful_paint_ms: paint['first-contentful-paint'],
                dom_content_loaded_ms: nav.domContentLoadedEventEnd, live_data_ms: performance.now()};
    }""")
    context.close()
    return {**timing, "bytes": sizes}


def summarise(loads: list[dict]) -> dict:
    out: dict = {"loads": len(loads)}
    for key in ("first_paint_ms", "first_contentful_paint_ms", "dom_content_loaded_ms", "live_data_ms"):
        values = [load[key] for load in loads if load.get(key) is not None]
        if values:
            out[key] = {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}
    sizes = loads[-1]["bytes"] if loads else {}
    out["page_bytes"] = {path: sizes.get(path) for path in PAGE_PATHS}
    out["page_bytes_total"] = sum(v for v in out["page_bytes"].values() if v)
    out["first_data_bytes"] = {path: sizes.get(path) for path in DATA_PATHS}
    # The bytes are the bodies as served (no compression); this later load pays only the
    # timings above, the first one also the endpoint's lazy start.
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loads", type=int, default=10)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium is None or sync_playwright is None:
        print("page bench: needs playwright (dev extra) and Debian's chromium (scripts/install-chromium)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="page-bench-") as tmp:
        proc, url = start_run(Path(tmp))
        loads: list[dict] = []
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                load_once(browser, url)  # the endpoint's web stack loads lazily: not a page cost
                for _ in range(args.loads):
                    loads.append(load_once(browser, url))
                browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    result = summarise(loads)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0 if len(loads) == args.loads else 1


if __name__ == "__main__":
    sys.exit(main())
