# statscache-exporter: `make run` runs the exporter on the embedded store, `make test` runs
# every check. Both work on a fresh Debian machine: they install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# datagrepper, for the tests that poll it, in its own virtualenv: its pins would downgrade
# packages the exporter uses (cryptography, dateutil); the tests run it as a server.
DG_VENV  := .venv-datagrepper
DG_STAMP := $(DG_VENV)/.installed
CONFIG ?= config.yaml
# apt-get as root, or through sudo when not root.
APT    := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: run test lint typecheck unit system-deps test-deps venv clean bench fedora-certs screenshots \
        prometheus-rules bench-history

run: fedora-certs
	$(BIN)/statscache-exporter run --config $(CONFIG)

# The certificates of Fedora's public broker (the fedora-public profile): Fedora's
# fedora-messaging package installs them in /etc/fedora-messaging, PyPI's wheel lacks them, so
# they are fetched from fedora-messaging's repository when missing, if the network allows.
FM_CERTS := statscache_exporter/data/fedora-messaging
FM_URL   := https://raw.githubusercontent.com/fedora-infra/fedora-messaging/stable/configs
fedora-certs: $(STAMP)
	@[ -f /etc/fedora-messaging/fedora-key.pem ] || [ -f $(FM_CERTS)/fedora-key.pem ] || { \
	  mkdir -p $(FM_CERTS) && for f in cacert.pem fedora-cert.pem fedora-key.pem; do \
	    $(BIN)/python -c 'import sys, urllib.request as u; \
	      open(sys.argv[2], "wb").write(u.urlopen(sys.argv[1], timeout=20).read())' \
	      $(FM_URL)/$$f $(FM_CERTS)/$$f.part 2>/dev/null && \
	      mv $(FM_CERTS)/$$f.part $(FM_CERTS)/$$f || { rm -f $(FM_CERTS)/$$f.part; \
	      echo "cannot fetch $(FM_URL)/$$f: the fedora-public source will say so and retry"; \
	      break; }; \
	  done; }

test: lint typecheck unit

unit: $(STAMP) test-deps $(DG_STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check statscache_exporter plugins tests bench grafana prometheus
	$(BIN)/ruff format --check statscache_exporter plugins tests bench grafana prometheus

typecheck: $(STAMP)
	$(BIN)/mypy

venv: $(STAMP)

# Benchmarks print figures and ratios (markdown on stdout, JSON in var/bench/); they assert no
# timings. Each runs even if one before failed; bench/report.py then writes the table of them
# all (var/bench/README-table.md, var/bench/summary.json, and stdout), and the target fails if
# any benchmark did. The RabbitMQ, InfluxDB and datagrepper benchmarks run smaller than their
# defaults so that the whole takes under 15 minutes on a 2-core machine; bench/README.md says
# what each figure means.
BENCH_OUT := var/bench
bench: $(STAMP) test-deps $(DG_STAMP)
	mkdir -p $(BENCH_OUT)
	find $(BENCH_OUT) -maxdepth 1 -name '*.json' ! -name pipeline-history.json -delete
	rm -f $(BENCH_OUT)/README-table.md $(BENCH_OUT)/failed
	@run() { name=$$1; shift; echo "=== $$name" >&2; start=$$(date +%s); \
	  $(BIN)/python bench/$$name.py "$$@" --json $(BENCH_OUT)/$$name.json || \
	    echo "$$name" >> $(BENCH_OUT)/failed; \
	  echo "=== $$name: $$(( $$(date +%s) - start )) s" >&2; }; \
	run pipeline --profile 10000; \
	run memory; \
	run latency; \
	run metrics_render --repeat 3; \
	run influx_write; \
	run amqp_consume --messages 20000 --bare-messages 2000; \
	run backfill --messages 3000; \
	run history --messages 200000 --datagrepper-messages 10000; \
	echo "=== report" >&2; $(BIN)/python bench/report.py --dir $(BENCH_OUT); \
	if [ -s $(BENCH_OUT)/failed ]; then echo "failed: $$(cat $(BENCH_OUT)/failed)" >&2; exit 1; fi

# A history import's worth: 10M messages through the pipeline (bench/pipeline.py --history,
# about 15 minutes), figures at 10k, 100k, 1M and 10M: messages/s, µs a message per tenth of
# the run, peak RSS, the store's size. Not part of `make bench`, whose report shows its row
# when var/bench/pipeline-history.json is there (`make bench` keeps that file).
bench-history: $(STAMP)
	mkdir -p $(BENCH_OUT)
	$(BIN)/python bench/pipeline.py --history --json $(BENCH_OUT)/pipeline-history.json

# The README's pictures of the web UI (docs/screenshots/*.png): a real exporter replaying a
# known stream (tests/browser.py), photographed by headless chromium.
screenshots: $(STAMP) test-deps
	$(BIN)/python tests/browser.py --out docs/screenshots

# Debian packages the virtualenv needs (venv/ensurepip, a compiler for wheels that build),
# installed only when missing.
system-deps:
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null && command -v gcc >/dev/null || { \
	  $(APT) update -q && $(APT) install -y -q python3 python3-venv python3-dev gcc; }

# The servers the integration tests start on loopback, installed only when missing:
# prometheus (and promtool), without its recommended node exporter; influxdb (influxd 1.x);
# rabbitmq-server (its scripts live in /usr/sbin and /usr/lib/rabbitmq/bin); postgresql and
# libpq-dev (datagrepper's); gnupg (fedmsg signatures); openssl (a test's client certificate);
# chromium and chromium-driver (the web UI's browser tests and `make screenshots`);
# systemd (systemd-analyze checks contrib/systemd's unit; no systemd needs to run).
test-deps:
	@pkgs=; \
	{ command -v prometheus && command -v promtool; } >/dev/null || pkgs="$$pkgs prometheus"; \
	command -v influxd >/dev/null || pkgs="$$pkgs influxdb"; \
	command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || \
	  pkgs="$$pkgs rabbitmq-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || pkgs="$$pkgs postgresql"; \
	command -v pg_config >/dev/null || pkgs="$$pkgs libpq-dev"; \
	command -v gpg >/dev/null || pkgs="$$pkgs gnupg"; \
	command -v openssl >/dev/null || pkgs="$$pkgs openssl"; \
	[ -x /usr/bin/chromium ] || pkgs="$$pkgs chromium"; \
	[ -x /usr/bin/chromedriver ] || pkgs="$$pkgs chromium-driver"; \
	command -v systemd-analyze >/dev/null || pkgs="$$pkgs systemd"; \
	[ -z "$$pkgs" ] || { \
	  $(APT) update -q && $(APT) install -y -q --no-install-recommends $$pkgs; }

$(STAMP): pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'setuptools<82' wheel
	$(BIN)/pip install -q -e '.[schemas,dev]'
	touch $(STAMP)

$(DG_STAMP): | system-deps test-deps
	test -x $(DG_VENV)/bin/python || $(PYTHON) -m venv $(DG_VENV)
	$(DG_VENV)/bin/pip install -q --upgrade pip 'setuptools<82' wheel
	$(DG_VENV)/bin/pip install -q 'datagrepper==1.1.0' gunicorn bodhi-messages \
	  koji-fedoramessaging-messages copr-messaging pagure-messages noggin-messages anitya-schema \
	  discourse2fedmsg-messages
	touch $(DG_STAMP)

# prometheus/alerts.yaml and rules.yaml from prometheus/generate.py's Settings (job selector,
# prefix, thresholds); tests/test_prometheus_rules.py fails while they are stale.
prometheus-rules: $(STAMP)
	$(BIN)/python prometheus/generate.py

clean:
	rm -rf $(VENV) $(DG_VENV) var build *.egg-info
