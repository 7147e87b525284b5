#!/usr/bin/env python3
"""The summary of a ``make bench`` run: one table of every figure, with what it was compared
with in the same run, the ratio, the target and whether it was met, and the machine.

Reads the JSON every benchmark wrote (``var/bench/<benchmark>.json`` by default: ``--dir``),
writes the table as markdown (``README-table.md`` there, and stdout) and as JSON
(``summary.json``: the machine, each benchmark's date and load averages, and the rows). A
benchmark that did not run (no JSON) is listed as missing; one whose JSON cannot be read is
listed with the error. Figures are taken as the benchmarks wrote them, nothing is measured
here.

    .venv/bin/python bench/report.py [--dir var/bench]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common

#: The benchmarks `make bench` runs, in the table's order.
BENCHMARKS = (
    "pipeline",
    "memory",
    "latency",
    "metrics_render",
    "influx_write",
    "amqp_consume",
    "backfill",
)
OUTPUTS = ("summary.json", "README-table.md")


@dataclass
class Row:
    """One figure: ``measured`` (with its unit) against ``compared`` (what it was measured
    beside, in the same run, or "-"), ``ratio`` (measured / compared, or the benchmark's own
    ratio), ``target`` and ``result`` (PASS, FAIL or "-" when no target was set)."""

    benchmark: str
    figure: str
    measured: str
    compared: str = "-"
    ratio: str = "-"
    target: str = "-"
    result: str = "-"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def num(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def ms(x: float) -> str:
    """Milliseconds, to a sensible precision: 1,620 / 66.8 / 0.609 / 0.0004."""
    if x >= 100:
        return f"{x:,.0f} ms"
    if x >= 1:
        return f"{x:.1f} ms"
    return f"{x:.3f} ms" if x >= 0.01 else f"{x:.2g} ms"


def times(x: float) -> str:
    """A speed-up factor: 2,664x / 15.7x."""
    return f"{x:,.0f}x faster" if x >= 100 else f"{x:.1f}x faster"


# --- one extractor per benchmark ---------------------------------------------------------------


def pipeline_rows(d: dict[str, Any]) -> Iterator[Row]:
    target = float(d.get("target_ratio", 0.5))
    results = d["results"]
    for r in results:
        yield Row(
            "pipeline",
            f"messages/s through every plugin into the store, {r['messages']:,} messages",
            num(r["pipeline_messages_per_second"]),
            f"json.loads {num(r['loads_messages_per_second'])}/s",
            f"{r['ratio']:.3f}",
            f"ratio >= {target:g}",
            verdict(r["ratio"] >= target),
        )
    if len(results) > 1:
        first, last = results[0], results[-1]
        growth = last["us_per_message"] / first["us_per_message"]
        yield Row(
            "pipeline",
            f"time a message at {last['messages']:,} vs {first['messages']:,} messages",
            f"{num(last['us_per_message'], 1)} µs",
            f"{num(first['us_per_message'], 1)} µs",
            f"{growth:.2f}",
            "<= 1.1 (linear or better)",
            verdict(growth <= 1.1),
        )
    yield from memory_and_store(NAME_PIPELINE, results[-1])


NAME_PIPELINE = "pipeline"
NAME_HISTORY = "pipeline-history"  # make bench-history: bench/pipeline.py --history


def memory_and_store(name: str, r: dict[str, Any], target_mb: float | None = None) -> Iterator[Row]:
    """Peak RSS (against ``target_mb`` if given) and the store's size on disk at ``r``'s size;
    nothing for JSON written before pipeline.py measured them."""
    if r.get("peak_rss_mb") is not None:
        yield Row(
            name,
            f"peak RSS of the run, {r['messages']:,} messages",
            f"{r['peak_rss_mb']:,.0f} MB",
            ratio=f"{r['peak_rss_mb'] / target_mb:.2f}" if target_mb else "-",
            target=f"<= {target_mb:g} MB" if target_mb else "-",
            result=verdict(r["peak_rss_mb"] <= target_mb) if target_mb else "-",
        )
    if "store_bytes" in r:
        yield Row(
            name,
            f"store on disk, {r['messages']:,} messages",
            f"{r['store_bytes'] / 2**20:,.1f} MB",
            f"{r['store_bytes'] / r['messages']:,.0f} bytes a message",
        )


def pipeline_history_rows(d: dict[str, Any]) -> Iterator[Row]:
    """make bench-history: messages/s and the cost of a message at the largest size (10M)
    against the smallest (10k), µs a message per tenth of the run, peak RSS, the store."""
    results = d["results"]
    first, last = results[0], results[-1]
    yield Row(
        NAME_HISTORY,
        f"messages/s through every plugin into the store, {last['messages']:,} messages",
        num(last["pipeline_messages_per_second"]),
        f"json.loads {num(last['loads_messages_per_second'])}/s",
        f"{last['ratio']:.3f}",
    )
    target = float(d.get("target_growth", 1.1))
    growth = last["us_per_message"] / first["us_per_message"]
    yield Row(
        NAME_HISTORY,
        f"time a message at {last['messages']:,} vs {first['messages']:,} messages",
        f"{num(last['us_per_message'], 1)} µs",
        f"{num(first['us_per_message'], 1)} µs",
        f"{growth:.2f}",
        f"<= {target:g}",
        verdict(growth <= target),
    )
    tenths = last.get("us_per_message_by_tenth") or []
    if tenths:
        yield Row(
            NAME_HISTORY,
            f"µs a message over each tenth of the {last['messages']:,}",
            ", ".join(f"{x:,.0f}" for x in tenths),
        )
    target_mb = (d.get("memory") or {}).get("target_peak_rss_mb")
    yield from memory_and_store(NAME_HISTORY, last, target_mb)


def memory_rows(d: dict[str, Any]) -> Iterator[Row]:
    t = d["target"]
    base = d["baseline"]
    yield Row("memory", "peak RSS of the exporter, no series", f"{base['peak_rss_mb']:.1f} MB")
    for r in d["results"]:
        is_target = r["live_series"] == t["series"]
        yield Row(
            "memory",
            f"peak RSS at {r['live_series']:,} live series",
            f"{r['peak_rss_mb']:.1f} MB",
            f"target {t['target_mb']:g} MB" if is_target else "-",
            f"{r['peak_rss_mb'] / t['target_mb']:.2f}" if is_target else "-",
            f"<= {t['target_mb']:g} MB" if is_target else "-",
            verdict(t["pass"]) if is_target else "-",
        )


def latency_rows(d: dict[str, Any]) -> Iterator[Row]:
    for r in d["results"]:
        rate = f"{r['rate']:g} messages/s"
        yield Row("latency", f"publish → /metrics p50 at {rate}", f"{num(r['p50_ms'])} ms")
        missing = f", {r['missing']} never visible" if r.get("missing") else ""
        yield Row(
            "latency",
            f"publish → /metrics p99 at {rate} (counted at {num(r['counted_rate'])}/s{missing})",
            f"{num(r['p99_ms'])} ms",
            f"target {num(r['target_ms'])} ms",
            f"{r['p99_ms'] / r['target_ms']:.2f}",
            f"<= flush interval + 250 ms = {num(r['target_ms'])} ms",
            verdict(r["pass"]),
        )


#: metrics_render's targets, by the start of their check name: the step prefix of its rows
_RENDER_STEPS = {
    "cached scrape": "GET /metrics cached",
    "cached render": "cached",
    "rebuild:": "rebuild (",
    "rebuild served": "GET /metrics after",
    "full build": "build (",
}


def metrics_render_rows(d: dict[str, Any]) -> Iterator[Row]:
    for t in d["targets"]:
        prefix = next((v for k, v in _RENDER_STEPS.items() if t["check"].startswith(k)), None)
        row = next(
            (
                r
                for r in d["results"]
                if prefix
                and r["series"] == t["series"]
                and r["format"] == t["format"]
                and r["step"].startswith(prefix)
            ),
            None,
        )
        informative = t["check"].endswith("(not a target)")
        ref = row.get("reference_median_ms") if row else None
        fmt = f", {t['format']}" if t.get("format") not in (None, "-") else ""
        yield Row(
            "metrics_render",
            f"{t['check']}, {t['series']:,} series{fmt}",
            ms(t["median_ms"]),
            f"prometheus-client {ms(ref)}" if ref is not None else "-",
            times(ref / t["median_ms"]) if ref is not None else "-",
            f"< {t['target_ms']:g} ms" + (" (information)" if informative else ""),
            "-" if informative else verdict(t["pass"]),
        )
    identical = d.get("ok")
    yield Row(
        "metrics_render",
        "output byte for byte prometheus-client's",
        "identical" if identical else "DIFFERENT",
        result=verdict(identical),
    )


def influx_write_rows(d: dict[str, Any]) -> Iterator[Row]:
    med = d["median_points_per_second"]
    target = d.get("target_ratio")
    yield Row(
        "influx_write",
        f"points/s written to InfluxDB, {d['points']:,} points",
        num(med["ours"]),
        f"plain requests loop {num(med['plain'])}/s",
        f"{d['ratio']:.3f}",
        f"ratio >= {target:g}" if target is not None else "-",
        verdict(d["ratio"] >= target) if target is not None else "-",
    )


def amqp_consume_rows(d: dict[str, Any]) -> Iterator[Row]:
    med = d["median_messages_per_second"]
    rate = d.get("target_messages_per_second")
    if rate is not None:
        yield Row(
            "amqp_consume",
            f"messages/s draining a durable queue of {d['messages']:,} published beforehand",
            num(med["ours"]),
            ratio=f"{med['ours'] / rate:.2f}",
            target=f">= {num(rate)} messages/s",
            result=verdict(med["ours"] >= rate),
        )
    target = d.get("target_ratio")
    yield Row(
        "amqp_consume",
        f"messages/s from RabbitMQ into the store, {d['messages']:,} a round",
        num(med["ours"]),
        f"bare fedora-messaging consumer {num(med['bare'])}/s",
        f"{d['ratio']:.3f}",
        f"ratio >= {target:g} (information)" if target is not None else "-",
        verdict(d["ratio"] >= target) if target is not None else "-",
    )


def backfill_rows(d: dict[str, Any]) -> Iterator[Row]:
    med = d["median_messages_per_second"]
    targets = d.get("targets", {})
    speed = targets.get("ratio", {})
    exact = targets.get("exact", {})
    dataset = d.get("dataset", {}).get("messages")
    size = f", {dataset:,} messages" if isinstance(dataset, int) else ""
    yield Row(
        "backfill",
        f"messages/s backfilled from datagrepper{size}",
        num(med["ours"]),
        f"naive page walk {num(med['naive'])}/s",
        f"{d['ratio']:.2f}x",
        f"ratio >= {speed['target']:g}x" if "target" in speed else "-",
        verdict(speed.get("pass")),
    )
    if exact:
        yield Row(
            "backfill",
            "every message exactly once",
            "ours exact" if exact.get("ours_exact") else "ours NOT exact",
            "naive exact" if exact.get("naive_exact") else "naive not exact",
            target="ours exact",
            result=verdict(bool(exact.get("ours_exact"))),
        )


EXTRACTORS: dict[str, Callable[[dict[str, Any]], Iterator[Row]]] = {
    "pipeline": pipeline_rows,
    "memory": memory_rows,
    "latency": latency_rows,
    "metrics_render": metrics_render_rows,
    "influx_write": influx_write_rows,
    "amqp_consume": amqp_consume_rows,
    "backfill": backfill_rows,
    NAME_HISTORY: pipeline_history_rows,
}


def generic_rows(name: str, d: dict[str, Any]) -> Iterator[Row]:
    """A benchmark this report does not know: its ratio, if it gives one."""
    ratio = d.get("ratio")
    yield Row(
        name, "ratio", f"{ratio:.3f}" if isinstance(ratio, int | float) else "(no figure read)"
    )


# --- the summary --------------------------------------------------------------------------------


def load(directory: Path) -> dict[str, dict[str, Any] | str]:
    """Each benchmark's JSON (or the error reading it), by benchmark name."""
    found: dict[str, dict[str, Any] | str] = {}
    for path in sorted(directory.glob("*.json")):
        if path.name in OUTPUTS:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            found[path.stem] = f"cannot read {path.name}: {exc}"
            continue
        found[str(data.get("benchmark", path.stem)) if isinstance(data, dict) else path.stem] = (
            data if isinstance(data, dict) else f"{path.name} is not a JSON object"
        )
    return found


def rows_of(found: dict[str, dict[str, Any] | str]) -> list[Row]:
    order = [b for b in BENCHMARKS if b in found] + sorted(set(found) - set(BENCHMARKS))
    rows: list[Row] = []
    for name in order:
        data = found[name]
        if isinstance(data, str):
            rows.append(Row(name, "(unreadable)", data))
            continue
        extract = EXTRACTORS.get(name)
        try:
            rows.extend(extract(data) if extract else generic_rows(name, data))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            rows.append(Row(name, "(figures not found)", f"{type(exc).__name__}: {exc}"))
    rows.extend(Row(b, "(not run)", "no JSON") for b in BENCHMARKS if b not in found)
    return rows


def runs_of(found: dict[str, dict[str, Any] | str]) -> dict[str, dict[str, Any]]:
    """When each benchmark ran and how loaded the machine was."""
    out: dict[str, dict[str, Any]] = {}
    for name, data in found.items():
        if isinstance(data, dict):
            m = data.get("machine") or {}
            out[name] = {
                "date": data.get("date"),
                "loadavg_start": m.get("loadavg"),
                "loadavg_end": data.get("loadavg_end"),
                "cpu": m.get("cpu"),
                "nproc": m.get("nproc"),
            }
    return out


def machine_line(m: dict[str, Any]) -> str:
    ram = f"{m['ram_mb'] / 1024:.1f} GiB RAM" if m.get("ram_mb") else "RAM unknown"
    return f"{m['cpu']} · {m['nproc']} cores · {ram} · {m['kernel']} · {m['python']}"


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "Machine: " + machine_line(summary["machine"]),
        "",
        "| benchmark | figure | measured | compared with (same run) | ratio | target | result |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for r in summary["rows"]:
        cells = [r["benchmark"], r["figure"], r["measured"], r["compared"], r["ratio"]]
        cells += [r["target"], r["result"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Runs (UTC; load average at start → end: other work on the machine skews them):"]
    lines += [""]
    for name, run in summary["runs"].items():
        other = ""
        m = summary["machine"]
        if run.get("cpu") not in (None, m["cpu"]) or run.get("nproc") not in (None, m["nproc"]):
            other = f" (on another machine: {run['cpu']}, {run['nproc']} cores)"
        lines.append(
            f"- {name}: {run['date']}, load {run['loadavg_start']} → {run['loadavg_end']}{other}"
        )
    return "\n".join(lines) + "\n"


def summarize(directory: Path) -> dict[str, Any]:
    found = load(directory)
    ordered = {b: found[b] for b in BENCHMARKS if b in found}
    ordered.update({k: v for k, v in sorted(found.items()) if k not in ordered})
    return {
        "machine": common.machine(),
        "runs": runs_of(ordered),
        "rows": [asdict(r) for r in rows_of(ordered)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("var/bench"), help="var/bench")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: no such directory (run `make bench` first)")
    summary = summarize(args.dir)
    text = markdown(summary)
    summary["markdown"] = text
    (args.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.dir / "README-table.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
