"""A plugin's example queries, read from the README.md its package ships (the bundled
plugins' READMEs have ```promql and ```sql blocks): the queries naming one of its metrics."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from statscache_exporter.plugin import Plugin

#: fenced block language → what the page calls it
LANGUAGES = {"promql": "PromQL", "sql": "InfluxQL", "influxql": "InfluxQL"}
_FENCE = re.compile(r"^```(\w+)\s*\n(.*?)^```", re.MULTILINE | re.DOTALL)
README_PREFIX = "statscache_"


@dataclass(frozen=True)
class Example:
    language: str
    text: str


def readme_of(plugin: type[Plugin]) -> Path | None:
    """README.md beside the plugin's module, or in its package's folder."""
    module = sys.modules.get(plugin.__module__)
    where = getattr(module, "__file__", None)
    if not where:
        return None
    folder = Path(where).parent
    for candidate in (folder / "README.md", folder.parent / "README.md"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _blocks(path: Path) -> tuple[tuple[str, str], ...]:
    text = path.read_text(encoding="utf-8")
    return tuple(
        (LANGUAGES[m.group(1).lower()], m.group(2))
        for m in _FENCE.finditer(text)
        if m.group(1).lower() in LANGUAGES
    )


def _statements(block: str, language: str) -> list[str]:
    """The queries of a block, each with the comment lines just above it: a blank line or a
    comment after a query starts the next one, and in PromQL so does every line."""
    comment = "#" if language == "PromQL" else "--"
    out: list[list[str]] = []
    current: list[str] = []
    for line in block.splitlines():
        is_comment = line.lstrip().startswith(comment)
        has_query = any(not x.lstrip().startswith(comment) for x in current)
        if not line.strip() or (has_query and (is_comment or language == "PromQL")):
            if current:
                out.append(current)
            current = []
        if line.strip():
            current.append(line)
    if current:
        out.append(current)
    return ["\n".join(lines) for lines in out]


def examples(plugin: type[Plugin], prefix: str) -> list[Example]:
    """The README's queries that name one of the plugin's metrics, with the README's
    ``statscache_`` prefix replaced by the configured one."""
    path = readme_of(plugin)
    if path is None:
        return []
    names = "|".join(re.escape(m.name) for m in plugin.metrics)
    pattern = re.compile(rf"\b{README_PREFIX}(?:{names})(?:_total)?\b")
    out = []
    for language, block in _blocks(path):
        for query in _statements(block, language):
            if pattern.search(query):
                out.append(Example(language, _reprefix(query, prefix)))
    return out


def _reprefix(query: str, prefix: str) -> str:
    if prefix == README_PREFIX:
        return query
    return re.sub(rf"\b{README_PREFIX}(?=[a-z])", prefix, query)
