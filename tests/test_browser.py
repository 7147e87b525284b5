"""The web UI in a real browser (tests/browser.py: Debian's chromium through chromedriver),
served by a real Daemon that replayed a known stream: every page loads without a console
error, the overview's chart holds one bar per minute the store holds, each plugin page's
charts hold what the store holds for the range shown, pages read the same without
JavaScript, and a screenshot of each page is written under var/screenshots/ for people to
look at. A missing browser fails with CI=true and skips elsewhere (tests/servers.py)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from browser import REPLAY, Demo, chromium, console_errors, demo_exporter, full_page_png
from browser import missing_browser as browser_missing
from servers import missing

from statscache_exporter.reader import Reader

pytestmark = pytest.mark.integration
SHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
UNREACHABLE_INFLUX = "http://127.0.0.1:9"  # discard: nothing answers


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    why = browser_missing()
    if why:
        missing(why)
    with demo_exporter(tmp_path_factory.mktemp("browser"), UNREACHABLE_INFLUX) as d:
        yield d


@pytest.fixture(scope="module")
def driver(demo: Demo) -> Iterator[Any]:
    with chromium() as d:
        yield d


def stored_minutes(demo: Demo, start: int, stop: int) -> int:
    """Buckets of the volume plugin's 1-minute series in [start, stop], read by SQL here."""
    db = sqlite3.connect(f"file:{demo.daemon.pipeline.store.path}?mode=ro", uri=True)
    try:
        (n,) = db.execute(
            "SELECT count(*) FROM buckets b JOIN series s ON s.id = b.series WHERE "
            "s.plugin = 'volume' AND s.metric = 'messages' AND b.resolution = 60 "
            "AND b.start BETWEEN ? AND ?",
            (start, stop),
        ).fetchone()
    finally:
        db.close()
    return int(n)


def stored_category_totals(demo: Demo) -> dict[str, int]:
    """Category → the volume_by_category total the store holds, read by SQL here."""
    db = sqlite3.connect(f"file:{demo.daemon.pipeline.store.path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT s.labels, t.value FROM totals t JOIN series s ON s.id = t.series "
            "WHERE s.plugin = 'volume_by_category'"
        ).fetchall()
    finally:
        db.close()
    totals: dict[str, int] = {}
    for labels, value in rows:
        name = json.loads(labels)["category"]
        totals[name] = totals.get(name, 0) + int(value)
    return totals


def points(driver: Any, chart: str) -> list[tuple[int, float]]:
    """(data-t, data-v) of every point the chart draws, read in one round trip."""
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]),"
        " e => [e.dataset.t, e.dataset.v])",
        f"#{chart} .point",
    )
    return [(int(t), float(v)) for t, v in found]


def shoot(driver: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / f"{name}.png").write_bytes(full_page_png(driver))


def test_overview_chart_holds_every_minute_the_store_holds(demo: Demo, driver: Any) -> None:
    driver.get(demo.url + "/")
    assert driver.title == "Overview · statscache-exporter"
    assert console_errors(driver) == []
    shoot(driver, "overview")
    bars = points(driver, "chart-main")
    # three hours of messages, each minute of them stored once: the chart's 6-hour window
    # (1-minute bars) holds every stored minute, read here straight from the store
    assert len(bars) == stored_minutes(demo, 0, 2**40) == 180
    assert sum(v for _, v in bars) == demo.daemon.pipeline.stats.processed[REPLAY]
    api = requests.get(
        demo.url + "/api/volume",
        params={"resolution": "1m", "rows_per_page": 1000, "order": "asc"},
        timeout=30,
    ).json()
    assert [(r["start"], r["value"]) for r in api["rows"]] == [(t, int(v)) for t, v in bars]


def test_overview_shows_sources_sinks_categories_and_a_card_per_plugin(
    demo: Demo, driver: Any
) -> None:
    from selenium.webdriver.common.by import By

    driver.get(demo.url + "/")
    text = driver.find_element(By.TAG_NAME, "main").text
    assert REPLAY in text and "done" in text  # the replay has read everything
    pending = Reader(demo.daemon.pipeline.store.path).outbox_state()[0]
    assert pending > 0  # nothing answers at the InfluxDB URL: all of it waits
    shown = driver.find_element(By.ID, "influx-pending").text
    assert abs(int(shown.replace(",", "")) - pending) <= pending // 10  # it may be queueing
    assert "not reachable" in text
    cards = driver.find_elements(By.CSS_SELECTOR, ".plugin-card")
    assert len(cards) == len(demo.daemon.pipeline.plugins)
    volume_card = points(driver, "spark-volume")
    assert sum(v for _, v in volume_card) == demo.daemon.pipeline.stats.processed[REPLAY]
    # the replay lies inside the overview's window (the volume card sums to it), so the top
    # categories are the store's ten largest totals of volume_by_category
    rows = driver.find_elements(By.CSS_SELECTOR, "table.share tbody tr")
    shown = {}
    for row in rows:
        name, value = (td.text for td in row.find_elements(By.TAG_NAME, "td")[:2])
        shown[name] = int(value.replace(",", ""))
    stored = stored_category_totals(demo)
    assert len(rows) == len(shown) == min(10, len(stored))
    assert all(stored.get(name) == n for name, n in shown.items())  # each its own count
    cut = sorted(stored.values(), reverse=True)[len(shown) - 1]
    assert all(n <= cut for name, n in stored.items() if name not in shown)  # the largest


def test_every_plugin_page_loads_with_charts_of_what_the_store_holds(
    demo: Demo, driver: Any
) -> None:
    from selenium.webdriver.common.by import By

    for plugin in demo.daemon.pipeline.plugins:
        ident = type(plugin).ident
        driver.get(f"{demo.url}/plugins/{ident}")
        assert console_errors(driver) == [], ident
        assert driver.title.startswith(type(plugin).name), ident
        shoot(driver, f"plugin-{ident}")
        for m in type(plugin).metrics:
            section = driver.find_element(By.ID, m.name)
            json_link = section.find_element(By.LINK_TEXT, "JSON").get_attribute("href")
            rows = all_rows(json_link)
            drawn = points(driver, f"chart-{m.name}")
            if m.kind == "counter":  # a bar per bucket start, the sum of its series
                sums: dict[int, float] = {}
                for r in rows:
                    sums[r["start"]] = sums.get(r["start"], 0) + r["value"]
                assert drawn == sorted(sums.items()), (ident, m.name)
            else:  # a dot per bucket of each series drawn (the six most recent)
                assert len(drawn) <= len(rows), (ident, m.name)


def all_rows(url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while url:
        r = requests.get(url, timeout=30)
        r.raise_for_status()
        rows += r.json()["rows"]
        url = r.links.get("next", {}).get("url", "")
    return rows


def test_plugin_page_range_resolution_and_filters(demo: Demo, driver: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(f"{demo.url}/plugins/volume_by_category")
    Select(driver.find_element(By.NAME, "range")).select_by_value("24h")
    Select(driver.find_element(By.NAME, "resolution")).select_by_value("1h")
    driver.find_element(By.NAME, "category").send_keys("bodhi")
    driver.find_element(By.CSS_SELECTOR, "form.controls button").click()
    query = parse_qs(urlsplit(driver.current_url).query)
    assert query == {"range": ["24h"], "resolution": ["1h"], "category": ["bodhi"]}
    assert console_errors(driver) == []
    bars = points(driver, "chart-messages_by_category")
    link = driver.find_element(By.LINK_TEXT, "CSV").get_attribute("href")
    assert "category=bodhi" in link and "resolution=1h" in link and "format=csv" in link
    csv_lines = requests.get(link, timeout=30).text.strip().split("\r\n")[1:]
    assert len(bars) == len(csv_lines) and len(bars) >= 3  # three hours, hour buckets
    assert {line.split(",")[3] for line in csv_lines} == {"bodhi"}
    assert sum(v for _, v in bars) == sum(int(line.split(",")[-1]) for line in csv_lines)
    shoot(driver, "plugin-volume_by_category-bodhi")


def every_page(demo: Demo) -> list[str]:
    """The overview and every plugin's page."""
    return ["/", *(f"/plugins/{type(p).ident}" for p in demo.daemon.pipeline.plugins)]


def drawn(driver: Any) -> dict[str, list[tuple[str, str]]]:
    """Every chart's points, (data-t, data-v), by chart id: what a page draws."""
    found: dict[str, list[tuple[str, str]]] = driver.execute_script(
        "const out = {};"
        "for (const e of document.querySelectorAll('svg[id] .point')) {"
        " const id = e.closest('svg[id]').id;"
        " (out[id] = out[id] || []).push([e.dataset.t, e.dataset.v]); }"
        "return out;"
    )
    return {chart: [(t, v) for t, v in pts] for chart, pts in found.items()}


def test_pages_read_the_same_without_javascript(demo: Demo, driver: Any) -> None:
    """Every page draws the same charts, point for point, in a browser with JavaScript off
    (which runs none of a page's scripts: an inline one is shown not to run)."""
    pages = every_page(demo)
    with_js = {}
    for path in pages:
        driver.get(demo.url + path)
        with_js[path] = drawn(driver)
    assert len(with_js["/"]["chart-main"]) == 180
    with chromium(javascript=False) as off:
        probe = "data:text/html,<p id=p>off</p><script>p.textContent='on'</script>"
        off.get(probe)
        assert off.find_element("id", "p").text == "off"  # JavaScript is off indeed
        for path in pages:
            off.get(demo.url + path)
            assert console_errors(off) == [], path
            assert drawn(off) == with_js[path], path


def test_pages_fetch_nothing_from_elsewhere(demo: Demo, driver: Any) -> None:
    """Every resource every page loaded came from the exporter itself."""
    for path in every_page(demo):
        driver.get(demo.url + path)
        loaded = json.loads(
            driver.execute_script(
                "return JSON.stringify(performance.getEntriesByType('resource').map(e => e.name))"
            )
        )
        assert loaded and all(u.startswith(demo.url + "/static/") for u in loaded), (path, loaded)
