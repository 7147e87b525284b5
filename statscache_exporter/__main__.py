import sys

from statscache_exporter.cli import main

sys.exit(main())
