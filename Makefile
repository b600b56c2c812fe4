# Quick start on a fresh Debian 12 machine, as root:  make demo   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
LIBDIR ?= $(PREFIX)/lib
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
MANDIR ?= $(PREFIX)/share/man
COMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions

# System packages the demo, the suite and the benchmarks use (installed only when missing).
# Building the package compiles libaarp.so (and the optional OpenSSL fast path).
APT_RUNTIME := iproute2 iputils-ping procps util-linux nftables curl gcc libc6-dev libssl-dev \
	python3-venv
# (debootstrap, systemd-container, dpkg-dev: the Debian package is installed into a fresh
# Debian 12 tree and its units run under a real systemd in a container)
APT_TEST := $(APT_RUNTIME) wget bind9-dnsutils dnsmasq-base netcat-openbsd tcpdump iperf3 \
	anytun uanytun kamailio sip-tester rtpengine-daemon redis-server valgrind make psmisc \
	ethtool socat clang libclang-rt-14-dev openssl bird2 exabgp golang-go debootstrap \
	systemd-container dpkg-dev man-db redis-sentinel faketime
APT_BENCH := $(APT_TEST) linux-perf
# The Debian package is built with Debian's own interpreter (its venv runs on the target's).
APT_DEB := $(APT_RUNTIME) python3-dev dpkg-dev
# The demo's chapters run uanytun (tunnels), Kamailio + SIPp (relay mode), Redis (cluster),
# BIRD 2 (the router) and ExaBGP (the nodes announcing the anycast prefixes).
APT_DEMO := $(APT_RUNTIME) uanytun kamailio sip-tester redis-server redis-sentinel bird2 exabgp

.PHONY: help deps-runtime deps-test deps-bench deps-demo venv build install demo test test-unit lint \
	bench chaos fuzz soak clean deb deps-deb

help:
	@echo "make demo     install what is needed and run the anycast lab demo"
	@echo "make test     install test dependencies and run the whole suite"
	@echo "make lint     ruff over the Python code, and the import layers (lint-imports)"
	@echo "make bench    benchmarks against the real peers (prints ratios)"
	@echo "make chaos    chaos scenarios against a two-node cluster (CHAOS_ARGS=--help for options)"
	@echo "make fuzz     fuzz every harness for FUZZ_SECONDS each (default 60); findings go to"
	@echo "              fuzz/regressions/ (python -m fuzz --help for one harness, merging)"
	@echo "make soak     tunnel, churning hub and relay calls for SOAK_MINUTES (default 30); fails"
	@echo "              if RSS, fds or Redis state drift (python -m bench.soak --help)"
	@echo "make install  install the commands, libaarp.so, units, man pages (PREFIX, DESTDIR)"
	@echo "make deb      build the Debian package into dist/"

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
deps-deb:
	$(call apt_install,$(APT_DEB))

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
	$(VENV)/bin/ruff check aarp relay tests bench lab demo packaging fuzz setup.py
	$(VENV)/bin/lint-imports

test: deps-test build lint
	$(VENV)/bin/pytest -n 2 --dist loadgroup tests

test-unit: build
	$(VENV)/bin/pytest tests/unit

bench: deps-bench build
	$(PY) -m bench

# Chaos for the cluster (bench/chaos.py): node killed, Redis down, partition, Sentinel
# failover, clock skew; one row of losses and recovery per scenario.
CHAOS_ARGS ?=
chaos: deps-test build
	$(PY) -m bench.chaos $(CHAOS_ARGS)

# Coverage-guided fuzzing (fuzz/): libFuzzer harnesses under ASan+UBSan for the C parsers and
# data plane, atheris harnesses for the Python ones. `make test` replays their corpora.
FUZZ_SECONDS ?= 60
fuzz: deps-test build
	$(PY) -m fuzz run --seconds $(FUZZ_SECONDS)

# Soak (bench/soak.py): every daemon kind under churn for SOAK_MINUTES; the drift of RSS, open
# fds and Redis state per hour after the warm-up, against stated bounds.
SOAK_MINUTES ?= 30
soak: deps-test build
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES)

# System-wide: a private venv under $(PREFIX)/lib/anycast-toolkit, the commands linked into
# $(PREFIX)/bin, libaarp.so in $(LIBDIR) (so the literal LD_PRELOAD=libaarp.so CMD works), the
# systemd units, sysusers, man pages, bash completion and the example configurations.
# With DESTDIR the tree is staged there and works once copied to /: no staging path is left
# in the scripts, the venv or the byte code.
INSTALL_VENV := $(PREFIX)/lib/anycast-toolkit
STAGE := $(DESTDIR)$(INSTALL_VENV)
install: deps-runtime
	rm -rf "$(STAGE)" build/man build/completion
	$(PYTHON) -m venv "$(STAGE)"
	"$(STAGE)/bin/pip" install -q --upgrade "pip>=23"
	"$(STAGE)/bin/pip" install -q .
	"$(STAGE)/bin/python" packaging/docgen.py man build/man
	"$(STAGE)/bin/python" packaging/docgen.py completion build/completion
	install -D -m 0644 "$$("$(STAGE)/bin/python" -I -c 'from aarp import shim; print(shim.library_path())')" \
	  "$(DESTDIR)$(LIBDIR)/libaarp.so"
	if [ -n "$(DESTDIR)" ]; then \
	  grep -rlI -- "$(DESTDIR)" "$(STAGE)/bin" "$(STAGE)/pyvenv.cfg" | xargs -r sed -i "s|$(DESTDIR)||g"; \
	  find "$(STAGE)" -name __pycache__ -prune -exec rm -rf {} +; \
	  "$(STAGE)/bin/python" -m compileall -q -s "$(DESTDIR)" "$(STAGE)/lib"; \
	fi
	mkdir -p "$(DESTDIR)$(PREFIX)/bin"
	for c in aarp-resolve aarp-responder aarp-shim anytun-relay; do \
	  ln -sf "$(INSTALL_VENV)/bin/$$c" "$(DESTDIR)$(PREFIX)/bin/$$c"; done
	for page in build/man/*.[0-9]; do \
	  install -D -m 0644 /dev/null "$(DESTDIR)$(MANDIR)/man$${page##*.}/$${page##*/}.gz"; \
	  gzip -9nc "$$page" > "$(DESTDIR)$(MANDIR)/man$${page##*.}/$${page##*/}.gz"; done
	install -d "$(DESTDIR)$(COMPLETIONDIR)" "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(SYSUSERSDIR)"
	install -m 0644 build/completion/* "$(DESTDIR)$(COMPLETIONDIR)/"
	for u in packaging/systemd/*.service.in; do \
	  sed "s|@BINDIR@|$(PREFIX)/bin|g" "$$u" > "$(DESTDIR)$(UNITDIR)/$$(basename "$$u" .in)"; \
	  chmod 0644 "$(DESTDIR)$(UNITDIR)/$$(basename "$$u" .in)"; done
	install -m 0644 packaging/systemd/anycast-toolkit.sysusers "$(DESTDIR)$(SYSUSERSDIR)/anycast-toolkit.conf"
	install -d "$(DESTDIR)$(SYSCONFDIR)/anytun-relay" "$(DESTDIR)$(SYSCONFDIR)/default"
	install -m 0644 packaging/etc/anytun-relay/*.toml.example "$(DESTDIR)$(SYSCONFDIR)/anytun-relay/"
	[ -e "$(DESTDIR)$(SYSCONFDIR)/aarp.conf" ] || install -m 0644 packaging/etc/aarp.conf "$(DESTDIR)$(SYSCONFDIR)/"
	[ -e "$(DESTDIR)$(SYSCONFDIR)/default/aarp-responder" ] || \
	  install -m 0644 packaging/etc/default/aarp-responder "$(DESTDIR)$(SYSCONFDIR)/default/"
	if [ -z "$(DESTDIR)" ]; then \
	  ldconfig; \
	  ! command -v systemd-sysusers >/dev/null || systemd-sysusers "$(SYSUSERSDIR)/anycast-toolkit.conf"; \
	  [ ! -d /run/systemd/system ] || systemctl daemon-reload; \
	fi
	@echo "installed under $(DESTDIR)$(PREFIX): bin/{aarp-resolve,aarp-responder,aarp-shim,anytun-relay}, $(LIBDIR)/libaarp.so, units, man pages"

# The Debian package (dist/anycast-toolkit_VERSION_ARCH.deb): `make install` staged for /usr,
# with the Python dependencies in its private venv (packaging/debian/build.sh says why).
deb: deps-deb
	rm -rf build/deb
	$(MAKE) install PYTHON=/usr/bin/python3 DESTDIR="$(CURDIR)/build/deb/root" PREFIX=/usr \
	  LIBDIR=/usr/lib/$$(gcc -print-multiarch) UNITDIR=/usr/lib/systemd/system \
	  SYSUSERSDIR=/usr/lib/sysusers.d
	packaging/debian/build.sh build/deb/root dist

clean:
	rm -rf build dist *.egg-info aarp/libaarp.so .pytest_cache .ruff_cache
