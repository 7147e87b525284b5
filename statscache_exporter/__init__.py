"""statscache-exporter: the Fedora message bus as time-series metrics.

The public facade for plugin authors is :mod:`statscache_exporter.plugin`
(``Plugin``, ``Counter``, ``Gauge``, ``Output``) and :class:`~statscache_exporter.message.Message`.
"""

__version__ = "0.1.0"
