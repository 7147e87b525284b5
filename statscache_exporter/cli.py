"""The ``statscache-exporter`` command.

Exit codes:

- 0: success (``run``: stopped by SIGTERM/SIGINT after a final flush);
- 1: a runtime failure: the store cannot be opened or written, a replay file cannot be read;
- 2: a usage or configuration error (bad option, bad config key, unknown plugin, bad plugin);
- 130: ``replay``, ``backfill`` or ``import`` stopped by SIGINT or SIGTERM (what it processed
  is stored; run it again).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import yaml

from statscache_exporter import __version__, logs, runtime
from statscache_exporter import config as configuration
from statscache_exporter.config import Config, ConfigError
from statscache_exporter.plugin import PluginError, discover
from statscache_exporter.reader import Reader
from statscache_exporter.store import StoreError

log = logging.getLogger("statscache_exporter")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="statscache-exporter",
        description="Turns the Fedora message bus into time-series metrics.",
        epilog="Exit codes: 0 success, 1 runtime failure (store, input files), "
        "2 usage or configuration error, 130 replay interrupted (run it again to go on).",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "--config",
            metavar="PATH",
            help=f"config file (default: ${configuration.ENV_VAR} "
            f"or ./{configuration.DEFAULT_PATH})",
        )
        return p

    command("run", "Run the exporter: the configured sources into the store, until SIGTERM.")
    replay = command(
        "replay",
        "Feed files of messages (JSON Lines of any message shape, datagrepper pages, gzip) "
        "through the pipeline into the store, flush, print a summary and exit.",
    )
    replay.add_argument("files", nargs="+", metavar="FILE")
    replay.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    plugins = command("plugins", "List the installed plugins with their metrics and docs.")
    plugins.add_argument("--json", action="store_true", help="print the list as JSON")
    command("check-config", "Validate the config and print the effective config, secrets masked.")
    backfill = command(
        "backfill",
        "Fetch the messages of a time range from datagrepper (backfill.url), exactly, into the "
        "store; messages already counted are skipped. The checkpoint is not moved.",
    )
    backfill.add_argument("--since", required=True, type=_when, help="ISO 8601 time or epoch")
    backfill.add_argument("--until", type=_when, help="ISO 8601 time or epoch (default: now)")
    backfill.add_argument(
        "--dry-run", action="store_true", help="print the windows it would fetch, fetch nothing"
    )
    backfill.add_argument("--json", action="store_true", help="print the summary as JSON")
    history = command(
        "import",
        "Count a range of history into the store, each message once, from a datanommer "
        "database (--datanommer URL) or from Fedora's daily CSV dumps (FILE.tar ...); stopped "
        "or killed, the same command again goes on from where the store got to.",
    )
    history.add_argument(
        "files", nargs="*", metavar="FILE.tar", help="daily CSV dumps (.tar, .tar.gz, .tar.xz)"
    )
    history.add_argument(
        "--datanommer",
        metavar="URL",
        help="postgresql://user@host/db (the password: datanommer.password or PGPASSWORD)",
    )
    history.add_argument("--since", type=_when, help="ISO 8601 time or epoch (default: the first)")
    history.add_argument("--until", type=_when, help="ISO 8601 time or epoch, not included")
    history.add_argument("--json", action="store_true", help="print the summary as JSON")
    return top


def _when(text: str) -> float:
    """An ISO 8601 time with a zone (Z for UTC) or epoch seconds, as epoch seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time (2024-01-01T00:00:00Z) nor epoch seconds"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z for UTC)")
    return when.timestamp()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    runtime.tune()
    path = configuration.config_path(args.config)
    try:
        config = configuration.load(path)
        logs.setup(config.logging)
        handler = {
            "run": _run,
            "replay": _replay,
            "plugins": _plugins,
            "check-config": _check_config,
            "backfill": _backfill,
            "import": _import,
        }[args.command]
        return handler(config, args)
    except (ConfigError, PluginError) as exc:
        print(f"statscache-exporter: configuration error in {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreError, OSError) as exc:
        print(f"statscache-exporter: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _run(config: Config, args: argparse.Namespace) -> int:
    from statscache_exporter import daemon

    return daemon.run(config)


def _replay(config: Config, args: argparse.Namespace) -> int:
    from statscache_exporter.pipeline import influx_sink_for, open_pipeline
    from statscache_exporter.sources.replay import read

    pipeline = open_pipeline(config)
    sink = influx_sink_for(pipeline)
    if sink is not None:
        sink.start()
    started = time.monotonic()
    read_count = 0
    stop = _stop_between_messages()
    for path in args.files:
        for item in read(path):
            if stop.is_set():
                break
            read_count += 1
            pipeline.handle(item, "replay")
    interrupted = stop.is_set()  # what was processed is kept: the next replay skips it by id
    try:
        pipeline.flush()
        if sink is not None:
            sink.stop()  # sends what is queued, within influxdb.shutdown_timeout
        summary = _summary(pipeline, read_count, time.monotonic() - started)
        if sink is not None:
            pending, set_aside, _ = Reader(pipeline.store.path).outbox_state()
            summary["influxdb"] = {
                "points_written": sink.stats.points_written,
                "points_refused": sink.stats.points_refused,
                "set_aside": set_aside,
                "pending": pending,
                "late_unsent": sink.queued.late_unsent,
            }
    finally:
        pipeline.store.close()
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        _print_summary(summary)
    if interrupted:
        print("statscache-exporter: replay interrupted; run it again to go on", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _stop_between_messages() -> threading.Event:
    """SIGINT/SIGTERM set an event the replay loop checks between messages, so a message is
    never cut off half-way through its plugins (and then half-counted by the final flush)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def _summary(pipeline: Any, read_count: int, seconds: float) -> dict[str, Any]:
    stats = pipeline.stats
    series = pipeline.store.series_per_plugin()
    return {
        "messages_read": read_count,
        "processed": sum(stats.processed.values()),
        "rejected": stats.rejected_by_reason(),
        "rejected_total": sum(stats.rejected.values()),
        "duplicates": sum(stats.duplicates.values()),
        "plugins": {
            ident: {"series": series.get(ident, 0), "errors": stats.plugin_errors.get(ident, 0)}
            for ident in pipeline.plugin_idents
        },
        "seconds": round(seconds, 3),
    }


def _print_summary(s: dict[str, Any]) -> None:
    print(f"messages read   {s['messages_read']:>10}")
    print(f"processed       {s['processed']:>10}")
    print(f"duplicates      {s['duplicates']:>10}")
    print(f"rejected        {s['rejected_total']:>10}")
    for reason, n in s["rejected"].items():
        print(f"  {reason:<14}{n:>10}")
    print(f"{'plugin':<24}{'series':>8}{'errors':>8}")
    for ident, p in s["plugins"].items():
        print(f"{ident:<24}{p['series']:>8}{p['errors']:>8}")
    if "influxdb" in s:
        i = s["influxdb"]
        print(
            f"influxdb: {i['points_written']} points written, {i['points_refused']} refused, "
            f"{i['set_aside']} set aside in all, {i['pending']} still queued (sent at the next run)"
        )
    print(f"took {s['seconds']:.2f} s")


def _plugins(config: Config, args: argparse.Namespace) -> int:
    from statscache_exporter.pipeline import enabled_plugins

    available = discover()
    enabled = {type(p).ident for p in enabled_plugins(config, available)}
    listing: list[dict[str, Any]] = [
        {
            "ident": cls.ident,
            "name": cls.name,
            "summary": cls.summary,
            "description": cls.description,
            "enabled": ident in enabled,
            "metrics": [
                {"name": m.name, "kind": m.kind, "help": m.help, "labels": list(m.labels)}
                for m in cls.metrics
            ],
        }
        for ident, cls in available.items()
    ]
    if args.json:
        print(json.dumps(listing, indent=2))
        return EXIT_OK
    for p in listing:
        state = "" if p["enabled"] else "  (disabled)"
        print(f"{p['ident']}: {p['name']}{state}\n    {p['summary']}")
        if p["description"]:
            print(f"    {p['description']}")
        for m in p["metrics"]:
            labels = "{" + ", ".join(m["labels"]) + "}" if m["labels"] else ""
            print(f"    - {m['name']}{labels} ({m['kind']}): {m['help']}")
    return EXIT_OK


def _backfill(config: Config, args: argparse.Namespace) -> int:
    from statscache_exporter.backfill import (
        Backfill,
        BackfillError,
        BarProgress,
        LogProgress,
        Range,
        windows,
    )
    from statscache_exporter.datagrepper import Cancelled
    from statscache_exporter.pipeline import open_pipeline

    until = args.until if args.until is not None else time.time()
    if until <= args.since:
        print("statscache-exporter: --until must be after --since", file=sys.stderr)
        return EXIT_USAGE
    ranges = [Range(args.since, until)]
    if args.dry_run:
        todo = list(windows(ranges, config.backfill.window.total_seconds()))
        print(f"would fetch {len(todo)} windows from {config.backfill.url}:")
        for w in todo:
            print(f"  {w}")
        return EXIT_OK
    pipeline = open_pipeline(config)
    stop = _stop_between_messages()

    def deliver(item: dict[str, Any]) -> None:
        pipeline.handle(item, "backfill")

    progress = BarProgress(sys.stderr) if sys.stderr.isatty() else LogProgress()
    filler = Backfill(config.backfill, deliver, _no_cover, stop, progress=progress)
    started = time.monotonic()
    code = EXIT_OK
    try:
        filler.run(ranges)
    except Cancelled:
        code = EXIT_INTERRUPTED
    except BackfillError as exc:
        print(f"statscache-exporter: {exc}", file=sys.stderr)
        code = EXIT_FAILURE
    finally:
        pipeline.close()
    stats = pipeline.stats
    summary = {
        "fetched": filler.stats.messages,
        "processed": stats.processed.get("backfill", 0),
        "duplicates": stats.duplicates.get("backfill", 0),
        "rejected": sum(n for (src, _), n in stats.rejected.items() if src == "backfill"),
        "windows": filler.stats.windows_done,
        "requests": filler.stats.requests,
        "requests_failed": filler.stats.requests_failed,
        "splits": filler.stats.splits,
        "seconds": round(time.monotonic() - started, 3),
    }
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(", ".join(f"{k} {v}" for k, v in summary.items()))
    return code


def _import(config: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from statscache_exporter.backfill import BarProgress, LogProgress
    from statscache_exporter.config import check_postgresql_url
    from statscache_exporter.history import ImportError_, import_database, import_dumps
    from statscache_exporter.pipeline import influx_sink_for, open_pipeline
    from statscache_exporter.sources.dumps import DumpError

    if bool(args.datanommer) == bool(args.files):
        print("statscache-exporter: import: give --datanommer URL or dump files", file=sys.stderr)
        return EXIT_USAGE
    if args.since is not None and args.until is not None and args.until <= args.since:
        print("statscache-exporter: --until must be after --since", file=sys.stderr)
        return EXIT_USAGE
    if args.datanommer:
        try:
            check_postgresql_url(args.datanommer, "--datanommer")
        except ConfigError as exc:
            print(f"statscache-exporter: {exc}", file=sys.stderr)
            return EXIT_USAGE
    pipeline = open_pipeline(config)
    sink = influx_sink_for(pipeline)
    if sink is not None:
        sink.start()
    stop = _stop_between_messages()
    progress = BarProgress(sys.stderr) if sys.stderr.isatty() else LogProgress(label="import")
    started = time.monotonic()
    code, summary = EXIT_OK, None
    try:
        if args.datanommer:
            result = import_database(
                pipeline, args.datanommer, args.since, args.until, stop, progress
            )
        else:
            result = import_dumps(
                pipeline, [Path(f) for f in args.files], args.since, args.until, stop, progress
            )
        if not result.complete:
            code = EXIT_INTERRUPTED
        pipeline.flush()
        if sink is not None:
            sink.stop()  # sends what is queued, within influxdb.shutdown_timeout
        stats = pipeline.stats
        summary = _summary(pipeline, result.stats.messages, time.monotonic() - started)
        summary.update(result.details)
        summary.update(
            messages_per_second=round(result.stats.messages / max(summary["seconds"], 1e-9), 1),
            resumed_from=result.stats.resumed_from,
            resume_point=result.resume_point,
            complete=result.complete,
            processed=stats.processed.get("import", 0),
            duplicates=stats.duplicates.get("import", 0),
        )
    except (ImportError_, DumpError) as exc:
        print(f"statscache-exporter: {exc}", file=sys.stderr)
        code = EXIT_FAILURE
    finally:
        try:
            pipeline.flush()
        finally:
            pipeline.store.close()
    if summary is None:
        return code
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        _print_summary(summary)
        print(
            f"source {summary['source']}, resumed from {summary['resumed_from'] or 'nothing'}, "
            f"resume point now {summary['resume_point'] or '-'}"
        )
        if summary.get("unresolved_total"):
            print(f"unresolved references: {summary['unresolved']}")
    if code == EXIT_INTERRUPTED:
        print("statscache-exporter: import interrupted; run it again to go on", file=sys.stderr)
    return code


def _no_cover(_until: float) -> None:
    """A manual range says nothing about what came before it: the checkpoint stays."""


def _check_config(config: Config, args: argparse.Namespace) -> int:
    from statscache_exporter.pipeline import enabled_plugins

    plugins = enabled_plugins(config, discover())
    print(f"# config OK; plugins enabled: {', '.join(type(p).ident for p in plugins)}")
    print(yaml.safe_dump(configuration.to_plain(config), sort_keys=False), end="")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
