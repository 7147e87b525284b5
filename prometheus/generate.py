"""The bundled Prometheus rules: alerting rules (``alerts.yaml``) and recording rules
(``rules.yaml``) for statscache-exporter, built from plain dicts so that every alert has a
``for:``, a ``severity`` and annotations that say what to look at.

Everything an operator may want to change is in one place, :class:`Settings`: the selector
that finds the exporter's targets (``job="statscache-exporter"`` by default), the metric prefix
(the exporter's ``prometheus.prefix``), and every threshold. Change a default there and run
``python prometheus/generate.py`` (``make prometheus-rules``): it rewrites the two files, which
are committed (Prometheus reads them as they are). ``--check`` only compares and exits 1
naming the stale files; ``tests/test_prometheus_rules.py`` does the same check. ``--selector``
and ``--out`` write a copy for another job elsewhere without editing this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Json = dict[str, Any]

HERE = Path(__file__).resolve().parent
ALERTS = "alerts.yaml"
RULES = "rules.yaml"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(duration: str) -> int:
    """A Prometheus duration of one unit (``15m``, ``36h``) in seconds."""
    match = re.fullmatch(r"(\d+)([smhdw])", duration)
    if match is None:
        raise ValueError(f"not a duration of one unit: {duration!r}")
    return int(match[1]) * _UNITS[match[2]]


@dataclass(frozen=True)
class Settings:
    """The one place to change the rules (prometheus/README.md has the table of them)."""

    #: label matchers that select the exporter's targets in every rule
    selector: str = 'job="statscache-exporter"'
    #: the exporter's prometheus.prefix (grafana/generate.py has its own PREFIX: change both)
    prefix: str = "statscache_"
    #: sources whose 0 in source_connected is no outage: a replay is 0 once it has read its
    #: files (the shipped config.yaml's is "demo"), and "backfill" is the gap filler's
    #: context, which is never "connected". A regex, matched whole.
    not_live_sources: str = "backfill|demo"

    exporter_down_for: str = "5m"
    source_disconnected_for: str = "10m"
    #: no message newer than this while a live source is connected
    bus_silent_after: str = "15m"
    bus_silent_for: str = "5m"
    backfill_stuck_for: str = "15m"
    #: the InfluxDB outbox grows over each such window, its oldest point older than
    #: backlog_min_age, for influxdb_backlog_for
    influxdb_backlog_window: str = "10m"
    influxdb_backlog_min_age: str = "5m"
    influxdb_backlog_for: str = "30m"
    #: InfluxDB has taken no write while points wait
    influxdb_down_for: str = "10m"
    #: messages processed over this window, and no flush committed in it
    flush_window: str = "10m"
    flush_failing_for: str = "5m"
    #: a plugin failing on more than this share of the messages processed over the window
    plugin_error_share: float = 0.01
    plugin_error_window: str = "15m"
    plugin_errors_for: str = "15m"
    #: emissions counted under the overflow label value within the window
    series_overflow_window: str = "1h"
    series_overflow_for: str = "15m"
    #: a compose stage whose latest state is failed, and changed within this
    compose_failed_within: str = "3d"
    compose_failed_for: str = "5m"
    #: the release label of Rawhide: pungi's compose id ("Fedora-Rawhide") and the releng
    #: scripts' topic ("rawhide", until 2017)
    rawhide_releases: str = "Fedora-Rawhide|rawhide"
    rawhide_stale_after: str = "36h"
    rawhide_stale_for: str = "15m"

    def sel(self, metric: str, *matchers: str) -> str:
        """``<prefix><metric>{<selector>, matchers}``."""
        return f"{self.prefix}{metric}{{{', '.join((self.selector, *matchers))}}}"


# --- recording rules ------------------------------------------------------------------------------

#: The recorded series' names without the prefix: (level, metric, operation). Prometheus's
#: naming convention, level:metric:operation; grafana/generate.py reads the same names.
RATE_WINDOW = "5m"


def recorded(s: Settings, level: str, metric: str) -> str:
    return f"{level}:{s.prefix}{metric}:rate{RATE_WINDOW}"


def recording_rules(s: Settings) -> list[Json]:
    """Per target, the rates the dashboards ask most (messages in all and by category, koji
    builds by state), then the same across replicas of one job (``max without (instance)``:
    replicas count the same stream, see the README's "Running more than one")."""
    per_target = [
        ("instance", "messages"),
        ("instance_category", "messages_by_category"),
        ("instance_koji_state", "koji_builds"),
    ]
    rules: list[Json] = []
    for level, metric in per_target:
        rules.append(
            {
                "record": recorded(s, level, metric),
                "expr": f"rate({s.sel(metric + '_total')}[{RATE_WINDOW}])",
            }
        )
    for level, metric in per_target:
        job_level = "job" + level.removeprefix("instance")
        rules.append(
            {
                "record": recorded(s, job_level, metric),
                "expr": f"max without (instance) ({recorded(s, level, metric)})",
            }
        )
    return rules


# --- alerting rules -------------------------------------------------------------------------------


def expr(text: str) -> str:
    """A PromQL expression written over several lines, without the common indentation."""
    return textwrap.dedent(text).strip() + "\n"


def alert(
    name: str, expression: str, for_: str, severity: str, summary: str, description: str
) -> Json:
    return {
        "alert": name,
        "expr": expression,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": " ".join(description.split())},
    }


def live(s: Settings) -> str:
    return f'source!~"{s.not_live_sources}"'


def exporter_alerts(s: Settings) -> list[Json]:
    """The exporter's own health, per target."""
    x = "exporter_"
    pending = s.sel(x + "influxdb_pending_points")
    oldest = s.sel(x + "influxdb_oldest_pending_age_seconds")
    processed = s.sel(x + "messages_processed_total")
    return [
        alert(
            "StatscacheExporterDown",
            f"up{{{s.selector}}} == 0\n",
            s.exporter_down_for,
            "critical",
            "statscache-exporter {{ $labels.instance }} is down",
            f"""Prometheus has not scraped {{{{ $labels.instance }}}} (job {{{{ $labels.job }}}})
            for {s.exporter_down_for}. Look at `systemctl status statscache-exporter` and
            `journalctl -u statscache-exporter` there: a configuration error exits 2 and is not
            restarted. A durable AMQP queue keeps the messages meanwhile, and the gap filler
            fetches what the live sources missed from datagrepper once it is back.""",
        ),
        alert(
            "StatscacheSourceDisconnected",
            f"{s.sel(x + 'source_connected', live(s))} == 0\n",
            s.source_disconnected_for,
            "warning",
            "Source {{ $labels.source }} of {{ $labels.instance }} is not connected",
            f"""The live source {{{{ $labels.source }}}} of {{{{ $labels.instance }}}} has not
            been connected for {s.source_disconnected_for}. /readyz and the exporter's log
            (journalctl -u statscache-exporter) say why; it keeps reconnecting. Check the broker
            or endpoint, its credentials and certificates. The outage is recorded and the gap
            filler fetches it from datagrepper after the reconnect.""",
        ),
        alert(
            "StatscacheBusSilent",
            expr(
                f"""
                max without (source) ({s.sel(x + "source_connected", live(s))} == 1)
                unless on (job, instance)
                ({s.sel(x + "newest_message_age_seconds")} < {seconds(s.bus_silent_after)})
                """
            ),
            s.bus_silent_for,
            "warning",
            "{{ $labels.instance }} is connected but counts no new messages",
            f"""{{{{ $labels.instance }}}} has a live source connected, but its newest message
            is older than {s.bus_silent_after} (or it has processed none since it started).
            Fedora's bus carries several messages a second: look at the source's bindings,
            topics and queue (a wrong exchange or routing key connects fine and receives
            nothing), and at the broker's queue for the exporter.""",
        ),
        alert(
            "StatscacheBackfillStuck",
            f"{s.sel(x + 'backfill_stuck')} == 1\n",
            s.backfill_stuck_for,
            "warning",
            "The gap filler of {{ $labels.instance }} is stuck",
            f"""The gap filler of {{{{ $labels.instance }}}} has been stuck for
            {s.backfill_stuck_for} on a datagrepper window that failed every retry; it keeps
            trying. /readyz names the window and the last error. Look at datagrepper (502/504
            on wide windows: lower backfill.window) and at backfill.url.""",
        ),
        alert(
            "StatscacheInfluxDBBacklog",
            expr(
                f"""
                deriv({pending}[{s.influxdb_backlog_window}]) > 0
                and
                {oldest} > {seconds(s.influxdb_backlog_min_age)}
                """
            ),
            s.influxdb_backlog_for,
            "warning",
            "Points for InfluxDB pile up on {{ $labels.instance }}",
            f"""The points {{{{ $labels.instance }}}} queues for InfluxDB have grown for
            {s.influxdb_backlog_for} and the oldest has waited over
            {s.influxdb_backlog_min_age}: InfluxDB is down, refuses the writes, or is slower
            than the bus. Look at statscache_exporter_influxdb_up, the exporter's log and
            InfluxDB's. Nothing is lost until the outbox is full (influxdb.max_pending).""",
        ),
        alert(
            "StatscacheInfluxDBDown",
            expr(
                f"""
                {s.sel(x + "influxdb_up")} == 0
                and
                {pending} > 0
                """
            ),
            s.influxdb_down_for,
            "warning",
            "InfluxDB takes no writes from {{ $labels.instance }}",
            f"""The last write of {{{{ $labels.instance }}}} to InfluxDB failed, and points have
            waited for it for {s.influxdb_down_for}. Look at the exporter's log for the error
            (unreachable, credentials, an unknown database) and at InfluxDB. The points stay
            queued and go out once it takes them again.""",
        ),
        alert(
            "StatscacheFlushFailing",
            expr(
                f"""
                sum without (source) (increase({processed}[{s.flush_window}])) > 0
                and on (job, instance)
                increase({s.sel(x + "flushes_total")}[{s.flush_window}]) == 0
                """
            ),
            s.flush_failing_for,
            "critical",
            "{{ $labels.instance }} processes messages but commits no flush",
            f"""{{{{ $labels.instance }}}} processed messages over the last {s.flush_window}
            and committed no flush to its store in that time: the counts are not stored, not
            acknowledged and not shown. Look at the exporter's log for the store error (disk
            full, permissions, a read-only file system) and at the disk of store.path.""",
        ),
        alert(
            "StatscachePluginErrors",
            expr(
                f"""
                rate({s.sel(x + "plugin_errors_total")}[{s.plugin_error_window}])
                / on (job, instance) group_left ()
                sum without (source) (rate({processed}[{s.plugin_error_window}]))
                > {s.plugin_error_share}
                """
            ),
            s.plugin_errors_for,
            "warning",
            "Plugin {{ $labels.plugin }} fails on {{ $value | humanizePercentage }} of the "
            "messages",
            f"""The plugin {{{{ $labels.plugin }}}} on {{{{ $labels.instance }}}} has failed on
            {{{{ $value | humanizePercentage }}}} of the messages processed over the last
            {s.plugin_error_window} (threshold {s.plugin_error_share:.0%}): those messages are
            not counted for it. Look at the exporter's log (journalctl -u
            statscache-exporter): it logs the first errors and every 1000th with the message
            id and traceback. The bus is likely sending a shape the plugin does not know.""",
        ),
        alert(
            "StatscacheSeriesOverflow",
            f"increase({s.sel(x + 'series_overflow_total')}[{s.series_overflow_window}]) > 0\n",
            s.series_overflow_for,
            "warning",
            "{{ $labels.metric }} is past its series cap",
            f"""The metric {{{{ $labels.metric }}}} of the plugin {{{{ $labels.plugin }}}} on
            {{{{ $labels.instance }}}} has reached its cardinality cap: over the last
            {s.series_overflow_window} new label values were counted under the overflow value
            (__other__). Totals stay exact, the breakdown does not. Look at
            statscache_exporter_series (the health dashboard's series per metric); raise
            plugins.<ident>.max_series (or prometheus.max_series) if Prometheus can hold more
            series, or accept it.""",
        ),
    ]


def bus_alerts(s: Settings) -> list[Json]:
    """Facts about Fedora's bus itself: one alert however many replicas count it (``max
    without (instance)``)."""
    return [
        alert(
            "FedoraComposeFailed",
            expr(
                f"""
                max without (instance) ({s.sel("releng_compose_status")}) == 2
                and
                max without (instance) ({s.sel("releng_compose_last_change_timestamp_seconds")})
                  > time() - {seconds(s.compose_failed_within)}
                """
            ),
            s.compose_failed_for,
            "warning",
            "The {{ $labels.release }} compose failed at {{ $labels.stage }} ({{ $labels.arch }})",
            f"""The newest message about the {{{{ $labels.release }}}} compose, stage
            {{{{ $labels.stage }}}} ({{{{ $labels.arch }}}}), says it failed (pungi's DOOMED
            and TERMINATED count as failed), within the last {s.compose_failed_within}.
            Look at the compose's logs and the Release engineering dashboard's latest compose
            states; the alert ends when a newer message about that stage arrives.""",
        ),
        alert(
            "FedoraRawhideComposeStale",
            expr(
                f"""
                time() - max without (instance, release) (
                  {
                    s.sel(
                        "releng_compose_last_success_timestamp_seconds",
                        f'release=~"{s.rawhide_releases}"',
                        'stage="compose"',
                        'arch="primary"',
                    )
                }
                ) > {seconds(s.rawhide_stale_after)}
                """
            ),
            s.rawhide_stale_for,
            "warning",
            "No successful Rawhide compose for {{ $value | humanizeDuration }}",
            f"""The newest finished Rawhide compose the exporter has seen is
            {{{{ $value | humanizeDuration }}}} old (threshold {s.rawhide_stale_after}):
            Rawhide composes nightly. Look at the Release engineering dashboard's latest
            compose states for the failing stage, and at FedoraComposeFailed.""",
        ),
    ]


# --- files ----------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (expressions) as literal blocks, keys in the order built."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

HEADER = (
    "# Generated by prometheus/generate.py from its Settings (job selector, prefix, thresholds):\n"
    "# edit that and run `make prometheus-rules`, not this file. prometheus/README.md says how\n"
    "# to load it.\n"
)


def render(groups: list[Json]) -> str:
    body = yaml.dump({"groups": groups}, Dumper=_Dumper, sort_keys=False, width=100)
    return HEADER + body


def files(s: Settings) -> dict[str, str]:
    """File name → text."""
    return {
        ALERTS: render(
            [
                {"name": "statscache-exporter", "rules": exporter_alerts(s)},
                {"name": "fedora-bus", "rules": bus_alerts(s)},
            ]
        ),
        RULES: render([{"name": "statscache-exporter.rules", "rules": recording_rules(s)}]),
    }


def write(s: Settings, out: Path, say: Callable[[str], None] = print) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files(s).items():
        (out / name).write_text(text)
        say(f"wrote {out / name}")


def stale(s: Settings = Settings(), out: Path = HERE) -> list[Path]:
    """Files in ``out`` that differ from what ``s`` builds, or are missing."""
    return [
        out / name
        for name, text in files(s).items()
        if not (out / name).exists() or (out / name).read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    parser.add_argument(
        "--selector",
        default=Settings.selector,
        help=f"label matchers of the exporter's targets (default: {Settings.selector})",
    )
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write (default: here)")
    args = parser.parse_args(argv)
    settings = dataclasses.replace(Settings(), selector=args.selector)
    if args.check:
        out_of_date = stale(settings, args.out)
        for p in out_of_date:
            print(f"stale: {p} (run python prometheus/generate.py)")
        return 1 if out_of_date else 0
    write(settings, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
