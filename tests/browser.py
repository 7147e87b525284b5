"""A real browser on the web UI, for tests/test_browser.py and `make screenshots`.

Debian's chromium, driven by selenium through Debian's chromedriver (packages chromium and
chromium-driver; `make test-deps` installs them), headless with the flags that work on a
machine whose network is closed. The pages are served by a real ``Daemon`` replaying a known
stream: 20,000 messages of the scaled corpus (bench/corpus.py, seeded) over three hours, their
rate rising and falling, ending at the top of the current hour so that the overview's "last
hours" hold it.

    .venv/bin/python tests/browser.py --out docs/screenshots   # what `make screenshots` runs
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import math
import os
import queue
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import corpus  # noqa: E402

from statscache_exporter import config as configuration  # noqa: E402
from statscache_exporter.daemon import Daemon  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: the flags /work/.library's machine notes give for headless chromium on a closed network
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
)  # fmt: skip
REPLAY = "corpus-replay"
#: the known stream: this many messages over MINUTES minutes, ending at the top of an hour
MESSAGES = 20_000
MINUTES = 180
SEED = 20240601


def missing_browser() -> str | None:
    """Why no browser test can run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: install it with `make test-deps` (Debian's {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: .venv/bin/pip install -e '.[schemas,dev]'"
    return None


def minute_weights(seed: int = SEED) -> list[float]:
    """How busy each minute is: a slow swell, a burst (a mass rebuild, say) and noise."""
    rng = random.Random(seed)
    return [
        (1 + 0.45 * math.sin(k / 28) + 0.9 * math.exp(-(((k - 118) / 6) ** 2)))
        * rng.lognormvariate(0, 0.08)
        for k in range(MINUTES)
    ]


def demo_messages(end: float) -> list[dict[str, Any]]:
    """The known stream: the scaled corpus (seeded), its times spread over the MINUTES up to
    ``end`` by :func:`minute_weights` (message order kept)."""
    messages = corpus.generate(MESSAGES, SEED, start=end - MINUTES * 60, late=0.0)
    weights = minute_weights()
    total = sum(weights)
    bounds = list(itertools.accumulate(w / total * MESSAGES for w in weights))
    minute = 0
    for i, message in enumerate(messages):
        while bounds[minute] <= i:
            minute += 1
        before = bounds[minute - 1] if minute else 0.0
        within = (i - before) / (bounds[minute] - before)
        _retime(message, end - (MINUTES - minute - within) * 60)
    return messages


def _retime(message: dict[str, Any], when: float) -> None:
    """Set a message's own time, as its kind carries it (fedora-messaging: sent-at)."""
    headers = message.get("headers")
    if isinstance(headers, dict) and "sent-at" in headers:
        stamp = datetime.fromtimestamp(int(when), UTC).isoformat()
        message["headers"] = {**headers, "sent-at": stamp}
    else:
        message["timestamp"] = round(when, 3)


@dataclass
class Demo:
    daemon: Daemon
    url: str
    messages: int
    end: float


@contextlib.contextmanager
def demo_exporter(tmp: Path, influx_url: str | None = None) -> Iterator[Demo]:
    """`run` in this process (a real Daemon: pipeline thread, replay source, HTTP server) on
    a new store under ``tmp``, once it has counted and flushed the whole stream."""
    end = float(math.floor(time.time() / 3600) * 3600)
    messages = demo_messages(end)
    replay = tmp / "replay.jsonl"
    corpus.write_jsonl(replay, messages)
    data: dict[str, Any] = {
        "store": {"path": str(tmp / "store.sqlite")},
        "sources": [{"type": "replay", "name": REPLAY, "paths": [str(replay)]}],
        "http": {"port": 0},
        "backfill": {"enabled": False},
    }
    if influx_url is not None:
        data["influxdb"] = {
            "enabled": True, "url": influx_url, "retry_max": "2s", "create_database": True,
            "shutdown_timeout": "1s",
        }  # fmt: skip
    config = configuration.from_dict(data)
    ready: queue.Queue[Daemon | BaseException] = queue.Queue()
    # the pipeline's store is the thread's that opened it: the Daemon is made in its loop's
    loop = threading.Thread(target=_run, args=(config, ready), name="demo-pipeline", daemon=True)
    loop.start()
    got = ready.get(timeout=60)
    if isinstance(got, BaseException):
        raise got
    daemon = got
    try:
        _wait_counted(daemon, len(messages))
        assert daemon.web is not None
        yield Demo(daemon, f"http://127.0.0.1:{daemon.web.port}", len(messages), end)
    finally:
        daemon.request_stop()
        loop.join(timeout=60)


def _run(config: configuration.Config, ready: queue.Queue[Daemon | BaseException]) -> None:
    try:
        daemon = Daemon(config)
        daemon.start()
    except BaseException as exc:
        ready.put(exc)
        raise
    ready.put(daemon)
    try:
        daemon.loop()
    finally:
        daemon.shutdown()


def _wait_counted(daemon: Daemon, n: int, timeout: float = 120.0) -> None:
    stats = daemon.pipeline.stats
    deadline = time.monotonic() + timeout
    while stats.received.get(REPLAY, 0) < n or not daemon.queue.empty():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the replay was not counted in {timeout:.0f} s")
        time.sleep(0.1)
    # the pipeline thread handles what it dequeued before it next goes to flush
    asked = time.time()
    while (stats.last_flush_attempt or 0) <= asked:
        if time.monotonic() > deadline:
            raise TimeoutError("no flush after the replay")
        time.sleep(0.1)


@contextlib.contextmanager
def chromium(width: int = 1360, height: int = 900, javascript: bool = True) -> Iterator[Any]:
    """A headless chromium (selenium WebDriver), its console logged, in a new profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: Any) -> list[str]:
    """What the page logged to the console at SEVERE level (errors, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def full_page_png(driver: Any) -> bytes:
    """A screenshot of the whole page, not only the window (chromium's own capture)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    return base64.b64decode(shot["data"])


#: the pages `make screenshots` writes for the README: (file name, path)
README_PAGES = (
    ("overview.png", "/"),
    ("plugin-volume_by_category.png", "/plugins/volume_by_category"),
)


def screenshots(out: Path, pages: tuple[tuple[str, str], ...] = README_PAGES) -> list[Path]:
    """Serve the demo and write a PNG of each page into ``out``; an InfluxDB is run beside it
    when influxd is installed, so that the sinks show one at work."""
    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="statscache-screens-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        influx_url = None
        if shutil.which("influxd") or os.access("/usr/bin/influxd", os.X_OK):
            from servers import influxdb_server

            influx = stack.enter_context(influxdb_server(Path(tmp) / "influx"))
            influx_url = influx.url
        demo = stack.enter_context(demo_exporter(Path(tmp), influx_url))
        if influx_url is not None:
            _wait_influx_drained(demo)
        written = []
        with chromium() as driver:
            for name, path in pages:
                driver.get(demo.url + path)
                errors = console_errors(driver)
                if errors:
                    raise RuntimeError(f"{path}: console errors {errors}")
                target = out / name
                target.write_bytes(full_page_png(driver))
                written.append(target)
    return written


def _wait_influx_drained(demo: Demo, timeout: float = 60.0) -> None:
    reader = demo.daemon.pipeline.store.path
    from statscache_exporter.reader import Reader

    deadline = time.monotonic() + timeout
    while Reader(reader).outbox_state()[0] > 0 and time.monotonic() < deadline:
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshots of the web UI for the README")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args(argv)
    why = missing_browser()
    if why:
        print(why, file=sys.stderr)
        return 1
    for path in screenshots(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
