# jobworker: `make run` starts a development server, `make test` runs every check.
#
# Both create the project virtualenv (.venv) from hash-locked sets: `make run`
# installs only the runtime (requirements.lock: server, CLI, PKI tool), the
# checks add the development tools (requirements-dev.lock). Nothing is
# installed outside .venv except the Debian packages the tests need (`sysdeps`).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
CERTS := certs
STATE_DIR ?= var
LISTEN ?= 127.0.0.1:7443
# trial's scratch directory, outside the checkout (job users must reach it) and
# one per checkout, so that two checkouts can run their suites at once.
TRIAL_TMP := /tmp/jobworker-trial-$(shell printf '%s' '$(CURDIR)' | sha256sum | cut -c1-12)
# Debian packages: qemu and a kernel boot the cgroup v2 guest for the
# isolation tests (virtme builds its initramfs with busybox, the guest's scratch
# disk needs mkfs.ext4); iproute2, procps and util-linux are used by tests;
# systemd's systemd-analyze checks contrib/systemd/jobworker.service;
# libseccomp2 compiles the jobs' syscall filter (the server needs it too).
SYSDEPS := qemu-system-x86 linux-image-amd64 busybox-static e2fsprogs iproute2 procps \
	util-linux systemd libseccomp2

.PHONY: all venv dev-venv run test lint typecheck unit proto lock sysdeps clean certs test-cgroup2 diagram bench

all: test

$(STAMP): requirements.lock setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation \
	    --config-settings editable_mode=compat -e .
	touch $@

$(DEV_STAMP): $(STAMP) requirements-dev.lock
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	touch $@

venv: $(STAMP)
dev-venv: $(DEV_STAMP)

# The development PKI: created once, never committed (see certs/README.md).
$(CERTS)/server.pem: | $(STAMP)
	$(BIN)/jobworker-pki init $(CERTS)

certs: $(CERTS)/server.pem

# Full isolation needs root; without it the server runs with --no-isolation.
run: $(STAMP) certs
	@mkdir -p $(STATE_DIR)
	@if [ "$$(id -u)" != 0 ]; then \
	    echo "make run: not root, starting with --no-isolation (development only)"; \
	    iso=--no-isolation; fi; \
	exec $(BIN)/twistd -n --pidfile= jobworker --listen $(LISTEN) \
	    --tls-cert $(CERTS)/server.pem --tls-key $(CERTS)/server.key \
	    --client-ca $(CERTS)/client-ca.pem --state-dir $(STATE_DIR) $$iso

sysdeps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    missing=$$(for p in $(SYSDEPS); do \
	        dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	    if [ -n "$$missing" ]; then \
	        echo "installing: $$missing"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	            apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    fi; \
	else echo "sysdeps: not root or no apt-get; tests that need them will say so"; fi

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy --strict jobworker tests twisted/plugins bench soak

unit: $(DEV_STAMP)
	$(BIN)/trial --temp-directory=$(TRIAL_TMP) tests

test: sysdeps lint typecheck unit

# cgroup v2 alone: boot a virtme-ng guest (qemu, no KVM needed, ~80 s) and
# run tests.test_isolation, tests.test_cgroups_real and the namespaced
# tests.test_restart in it. `make unit`
# runs it too (tests/test_cgroup2_guest.py), skipping with the reason when
# not root or qemu, a kernel or mkfs.ext4 is missing.
test-cgroup2: $(DEV_STAMP) sysdeps
	$(BIN)/trial --temp-directory=$(TRIAL_TMP)-cgroup2 tests.test_cgroup2_guest

# Benchmarks against baselines measured in the same run (bench/): needs root,
# under 10 minutes, rewrites doc/performance.md. Never part of `make test`.
bench: $(DEV_STAMP)
	$(BIN)/python -m bench --out doc/performance.md

# Regenerate the committed gRPC code; tests/test_proto.py fails when stale.
proto: $(DEV_STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto \
	    --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
	    proto/jobworker/v1/jobworker.proto

# Redraw doc/img/job-machine.svg from jobworker.job.machine (needs graphviz's dot).
diagram: $(DEV_STAMP)
	command -v dot >/dev/null || apt-get install -y -qq graphviz
	$(PYTHON) -m venv /tmp/jobworker-viz-venv
	/tmp/jobworker-viz-venv/bin/pip install --quiet graphviz $$(grep -o '^automat==[0-9.]*' requirements.lock)
	cd /tmp && PYTHONPATH=$(CURDIR):$$($(abspath $(BIN))/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
	    /tmp/jobworker-viz-venv/bin/automat-visualize --dot-directory /tmp/jobworker-dot \
	    --image-directory /tmp/jobworker-img --image-type svg jobworker.job.machine
	cp /tmp/jobworker-img/jobworker.job.machine.JobMachine.dot.svg doc/img/job-machine.svg

# Re-resolve requirements.in into requirements.lock, then requirements-dev.in
# (constrained by it) into requirements-dev.lock (see README, "Dependencies").
PIP_COMPILE := PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= /tmp/jobworker-lock-venv/bin/pip-compile \
	--quiet --generate-hashes --strip-extras --allow-unsafe
lock:
	$(PYTHON) -m venv /tmp/jobworker-lock-venv
	/tmp/jobworker-lock-venv/bin/pip install --quiet pip-tools
	$(PIP_COMPILE) -o requirements.lock requirements.in
	$(PIP_COMPILE) -o requirements-dev.lock requirements-dev.in

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp* $(TRIAL_TMP)

# The reliability suite: a real server as root on 127.0.0.1, thousands of jobs,
# disconnects, SIGKILL and SIGTERM (about 10 minutes); rewrites doc/reliability.md.
.PHONY: soak
soak: $(DEV_STAMP)
	$(BIN)/python -m soak --report doc/reliability.md
