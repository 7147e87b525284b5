"""The bundled plugins together: what `statscache-exporter plugins`, /api/ and the landing page
list; every plugin over the whole corpus without an error; by-user and by-package volume on
by default under the cardinality cap; and every PromQL and InfluxQL example of the plugins'
READMEs run by a real Prometheus and a real InfluxDB."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, corpus_messages, make_config
from plugin_cases import messages
from servers import exporter_process, influxdb_server, prometheus_server, write_jsonl

from statscache_exporter.cli import main
from statscache_exporter.daemon import exposition_for, web_context
from statscache_exporter.pipeline import enabled_plugins
from statscache_exporter.plugin import discover
from statscache_exporter.web import App

#: every bundled plugin and its metrics, in declaration order (written from the plugins' READMEs)
BUNDLED = {
    "accounts": ["accounts_registered", "accounts_group_membership_changes"],
    "badges": ["badges_awarded"],
    "bodhi": ["bodhi_updates", "bodhi_comments_by_user", "bodhi_comment_karma"],
    "copr": [
        "copr_builds_started",
        "copr_builds_ended",
        "copr_builds_started_by_owner",
        "copr_builds_ended_by_owner",
    ],
    "koji": [
        "koji_builds",
        "koji_builds_by_owner",
        "koji_builds_started",
        "koji_builds_finished",
        "koji_tasks",
        "koji_tag_changes",
    ],
    "pagure_contributions": [
        "pagure_contributions",
        "pagure_contributions_by_project",
        "pagure_contributions_by_user",
    ],
    "releng_composes": [
        "releng_compose_events",
        "releng_compose_status",
        "releng_compose_last_change_timestamp_seconds",
        "releng_compose_last_success_timestamp_seconds",
    ],
    "releng_image_uploads": [
        "releng_image_events",
        "releng_image_upload_status",
        "releng_image_upload_last_change_timestamp_seconds",
        "releng_image_upload_last_success_timestamp_seconds",
    ],
    "releng_koji_artifacts": [
        "releng_koji_artifact_events",
        "releng_koji_artifact_status",
        "releng_koji_artifact_last_change_timestamp_seconds",
        "releng_koji_artifact_last_success_timestamp_seconds",
    ],
    "releng_updates": [
        "releng_bodhi_compose_events",
        "releng_bodhi_compose_status",
        "releng_bodhi_compose_last_change_timestamp_seconds",
        "releng_bodhi_compose_last_success_timestamp_seconds",
        "releng_updates_syncs",
        "releng_updates_last_sync_timestamp_seconds",
    ],
    "volume": ["messages"],
    "volume_by_agent": ["messages_by_agent"],
    "volume_by_category": ["messages_by_category"],
    "volume_by_package": ["messages_by_package"],
    "volume_by_topic": ["messages_by_topic"],
    "volume_by_user": ["messages_by_user"],
}
PLUGIN_DATA = ("pagure", "koji", "copr", "bodhi", "accounts", "releng")


def installed() -> dict[str, Any]:
    return {i: c for i, c in discover().items() if c.__module__.startswith("statscache_plugins.")}


def test_plugins_command_lists_every_bundled_plugin_with_its_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("logging: {level: ERROR}\n")
    assert main(["plugins", "--json", "--config", str(config)]) == 0
    listing = {p["ident"]: p for p in json.loads(capsys.readouterr().out)}
    bundled = {i: p for i, p in listing.items() if i in installed()}
    assert {i: [m["name"] for m in p["metrics"]] for i, p in bundled.items()} == BUNDLED
    assert all(p["enabled"] and p["summary"] for p in bundled.values())


def test_api_and_landing_page_show_every_plugin(open_store: Any) -> None:
    p = open_store(plugins=installed())
    for name in PLUGIN_DATA:
        for raw in messages(name).values():
            p.handle(raw)
    p.flush()
    app = App(web_context(p, exposition_for(p)))
    responses: dict[str, tuple[str, bytes]] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        responses["last"] = (status, b"")

    def get(path: str) -> bytes:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": ""}
        environ.update({"SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http"})
        body = b"".join(app(environ, start_response))
        assert responses["last"][0].startswith("200"), (path, responses["last"])
        return body

    api = json.loads(get("/api/"))
    assert {e["ident"]: [m["name"] for m in e["metrics"]] for e in api["plugins"]} == BUNDLED
    landing = get("/").decode()
    for ident, metrics in BUNDLED.items():
        assert f">{ident}<" in landing, ident
        for metric in metrics:
            assert f">{metric}<" in landing, metric
    rows = json.loads(get("/api/koji"))
    assert rows["total"] > 0


def test_every_plugin_over_the_whole_corpus_without_an_error(open_store: Any) -> None:
    p = open_store(plugins=installed())
    for raw in corpus_messages():
        p.handle(raw)
    p.flush()
    assert p.stats.plugin_errors == {}
    counted = {metric for metric, *_ in p.store.dump()["totals"]}
    assert {m for metrics in BUNDLED.values() for m in metrics} - counted == {
        # the corpus has no production badge award or fedimg upload, and one image artifact
        # that never succeeded
        "badges_awarded",
        "releng_image_events",
        "releng_image_upload_status",
        "releng_image_upload_last_change_timestamp_seconds",
        "releng_image_upload_last_success_timestamp_seconds",
        "releng_koji_artifact_last_success_timestamp_seconds",
    }


def test_volume_by_user_and_by_package_are_on_by_default_under_the_cap(open_store: Any) -> None:
    enabled = {type(p).ident for p in enabled_plugins(make_config(Path("x")), installed())}
    assert {"volume_by_user", "volume_by_package"} <= enabled
    p = open_store(plugins=installed(), prometheus={"max_series": 3})
    for i in range(10):  # datagrepper /raw items naming user i and package i
        p.handle(
            {
                "topic": "org.fedoraproject.prod.x.y",
                "msg": {},
                "timestamp": 1_700_000_000 + i,
                "msg_id": f"v-{i}",
                "users": [f"user{i}"],
                "packages": [f"pkg{i}"],
            }
        )
    p.flush()
    users = p.store.totals_by_metric("messages_by_user")
    assert users == {
        '{"user":"user0"}': 1,
        '{"user":"user1"}': 1,
        '{"user":"user2"}': 1,
        '{"user":"__other__"}': 7,
    }
    assert p.store.totals_by_metric("messages_by_package")['{"package":"__other__"}'] == 7


# --- the READMEs' queries --------------------------------------------------------------------

_BLOCK = re.compile(r"```(promql|sql)\n(.*?)```", re.S)


def readme_queries() -> dict[str, list[str]]:
    """Every PromQL expression and InfluxQL statement in plugins/*/README.md: PromQL one per
    line (an indented line continues the one before), InfluxQL separated by blank lines;
    comments (# and --) left out."""
    found: dict[str, list[str]] = {"promql": [], "sql": []}
    for readme in sorted((REPO / "plugins").glob("*/README.md")):
        for lang, block in _BLOCK.findall(readme.read_text()):
            if lang == "promql":
                for line in block.splitlines():
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    if line[0].isspace() and found[lang]:
                        found[lang][-1] += " " + line.strip()
                    else:
                        found[lang].append(line.strip())
            else:
                for chunk in block.split("\n\n"):
                    lines = [x for x in chunk.splitlines() if not x.lstrip().startswith("--")]
                    if "".join(lines).strip():
                        found[lang].append(" ".join(x.strip() for x in lines))
    return found


@pytest.mark.integration
def test_readme_queries_run_on_real_prometheus_and_influxdb(tmp_path: Path) -> None:
    queries = readme_queries()
    assert len(queries["promql"]) >= 15 and len(queries["sql"]) >= 10, queries
    raws = [raw for name in PLUGIN_DATA for raw in messages(name).values()]
    path = write_jsonl(tmp_path / "plugins.jsonl", raws)
    with influxdb_server(tmp_path / "influx") as influx:
        settings = {
            "influxdb": {
                "enabled": True,
                "url": influx.url,
                "database": "readmes",
                "create_database": True,
            }
        }
        with exporter_process(tmp_path, [path], settings=settings) as exporter:
            exporter.wait_replayed(len(raws))
            with prometheus_server(tmp_path, [exporter.target]) as prom:
                prom.query("statscache_koji_builds_total")  # scraped
                for expr in queries["promql"]:
                    prom.instant(expr)  # a parse or evaluation error fails the call
            for statement in queries["sql"]:
                influx.query(statement, db="readmes")  # likewise
