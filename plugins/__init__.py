"""statscache-exporter's bundled plugins, installed as ``statscache_plugins``.

Each plugin lives in its own subpackage with a README.md and a sample.yaml, and is registered
in the ``statscache.plugin`` entry-point group exactly like a third-party plugin.
"""
