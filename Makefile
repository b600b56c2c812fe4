# Quick start on a fresh Debian 12 machine, as root:  make demo   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PREFIX ?= /usr/local

# System packages the demo, the suite and the benchmarks use (installed only when missing).
# Building the package compiles libaarp.so (and the optional OpenSSL fast path).
APT_RUNTIME := iproute2 iputils-ping procps util-linux nftables curl gcc libc6-dev libssl-dev \
	python3-venv
APT_TEST := $(APT_RUNTIME) wget bind9-dnsutils dnsmasq-base netcat-openbsd tcpdump iperf3 \
	anytun uanytun kamailio sip-tester rtpengine-daemon redis-server valgrind make psmisc \
	ethtool socat clang libclang-rt-14-dev openssl bird2 exabgp golang-go
APT_BENCH := $(APT_TEST) linux-perf
# The demo's chapters run uanytun (tunnels), Kamailio + SIPp (relay mode), Redis (cluster),
# BIRD 2 (the router) and ExaBGP (the nodes announcing the anycast prefixes).
APT_DEMO := $(APT_RUNTIME) uanytun kamailio sip-tester redis-server bird2 exabgp

.PHONY: help deps-runtime deps-test deps-bench deps-demo venv build install demo test test-unit lint \
	bench fuzz clean

help:
	@echo "make demo     install what is needed and run the anycast lab demo"
	@echo "make test     install test dependencies and run the whole suite"
	@echo "make lint     ruff over the Python code, and the import layers (lint-imports)"
	@echo "make bench    benchmarks against the real peers (prints ratios)"
	@echo "make fuzz     fuzz every harness for FUZZ_SECONDS each (default 60); findings go to"
	@echo "              fuzz/regressions/ (python -m fuzz --help for one harness, merging)"
	@echo "make install  install the package and put libaarp.so into $(PREFIX)/lib"

define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "== installing system packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=900 update -q && apt-get -o DPkg::Lock::Timeout=900 install -y -q $$missing \
	    || { echo "apt-get install failed (are you root?)"; exit 1; }; \
	fi
endef

deps-runtime:
	$(call apt_install,$(APT_RUNTIME))
deps-test:
	$(call apt_install,$(APT_TEST))
deps-bench:
	$(call apt_install,$(APT_BENCH))
deps-demo:
	$(call apt_install,$(APT_DEMO))

$(VENV)/.stamp: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23" "setuptools>=68" wheel
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.stamp

# Recompile shim_c/ in place (the editable install does it once; this keeps it current).
build: venv
	$(PY) setup.py -q build_ext --inplace

demo: deps-demo build
	$(PY) -m demo

lint: venv
	$(VENV)/bin/ruff check aarp relay tests bench lab demo fuzz setup.py
	$(VENV)/bin/lint-imports

test: deps-test build lint
	$(VENV)/bin/pytest -n 2 --dist loadgroup tests

test-unit: build
	$(VENV)/bin/pytest tests/unit

bench: deps-bench build
	$(PY) -m bench

# Coverage-guided fuzzing (fuzz/): libFuzzer harnesses under ASan+UBSan for the C parsers and
# data plane, atheris harnesses for the Python ones. `make test` replays their corpora.
FUZZ_SECONDS ?= 60
fuzz: deps-test build
	$(PY) -m fuzz run --seconds $(FUZZ_SECONDS)

# System-wide: a private venv under $(PREFIX)/lib, the commands linked into $(PREFIX)/bin and
# libaarp.so in $(PREFIX)/lib, so the literal LD_PRELOAD=libaarp.so CMD works.
INSTALL_VENV := $(DESTDIR)$(PREFIX)/lib/anycast-toolkit
install: deps-runtime
	$(PYTHON) -m venv $(INSTALL_VENV)
	$(INSTALL_VENV)/bin/pip install -q --upgrade "pip>=23"
	$(INSTALL_VENV)/bin/pip install -q .
	install -D -m 0755 "$$($(INSTALL_VENV)/bin/aarp-shim --path)" $(DESTDIR)$(PREFIX)/lib/libaarp.so
	mkdir -p $(DESTDIR)$(PREFIX)/bin
	for c in aarp-resolve aarp-responder aarp-shim anytun-relay; do \
	  ln -sf $(PREFIX)/lib/anycast-toolkit/bin/$$c $(DESTDIR)$(PREFIX)/bin/$$c; done
	[ -n "$(DESTDIR)" ] || ldconfig
	@echo "installed: $(PREFIX)/bin/{aarp-resolve,aarp-responder,aarp-shim,anytun-relay}, $(PREFIX)/lib/libaarp.so"

clean:
	rm -rf build *.egg-info aarp/libaarp.so .pytest_cache .ruff_cache
