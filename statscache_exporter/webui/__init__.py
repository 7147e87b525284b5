"""The web UI: server-rendered pages of the store's buckets and the exporter's state
(:mod:`pages`), inline SVG charts (:mod:`charts`), the templates and static files they use."""

from statscache_exporter.webui.pages import PageError, Pages

__all__ = ["PageError", "Pages"]
