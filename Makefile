# wanbalanced: `make test` and `make demo` install what they need by themselves
# (Debian packages, a venv) so they work on a fresh Debian 12 machine as root.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# user-mode-linux: the lab's kernel with the real sch_teql; kmod: insmod in the
# guest; iproute2 and iputils-ping: the lab's fault injection and observers;
# gcc, pkg-config, python3-dev, libsystemd-dev: to build systemd-python;
# ppp and pppoe: the lab's PPP and PPPoE lines (pppd, its PPPoE plugin, pppoe-server).
APT_PACKAGES := user-mode-linux kmod iproute2 iputils-ping python3-venv \
                gcc pkg-config python3-dev libsystemd-dev ppp pppoe
STAMP  := $(VENV)/.installed
# promtool, unpacked from Debian's prometheus package rather than installed,
# so that testing does not leave a Prometheus server running on the host.
TOOLS  := .lab/tools
PROMTOOL := $(TOOLS)/usr/bin/promtool
export PATH := $(CURDIR)/$(TOOLS)/usr/bin:$(PATH)

.PHONY: all deps test unit typecheck lab demo clean deb

all: test

deps: $(STAMP) $(PROMTOOL)

$(PROMTOOL):
	@mkdir -p $(TOOLS)
	cd $(TOOLS) && { apt-get download prometheus 2>/dev/null || { apt-get update -q && apt-get download prometheus; }; }
	cd $(TOOLS) && dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb
	@test -x $@

$(STAMP): pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

typecheck: deps
	$(BIN)/mypy

unit: deps
	$(BIN)/python -m pytest -q tests/unit

# The lab suite runs inside one User-Mode Linux guest (see lab/uml.py), once
# on each kernel it must pass on (lab/kernel.py): the newest Debian offers and,
# where it boots on this host, the packaged one; WB_LAB_KERNEL forces one.
lab: deps
	@kernels=$$($(BIN)/python -m lab.kernel --proof) || exit 1; failed=""; \
	for k in $$kernels; do \
	  echo "== lab suite on the $$k kernel"; \
	  $(BIN)/python -m lab.uml --kernel $$k --timeout 1800 -- \
	    $(BIN)/python -m pytest -v -p no:cacheprovider tests/lab || failed="$$failed $$k"; \
	done; \
	if [ -n "$$failed" ]; then echo "lab suite failed on:$$failed"; exit 1; fi

# The Debian package (debian/, docs/install.md): dpkg-buildpackage in a copy of
# the checkout (its tracked and untracked, not ignored, files) in
# build/deb/src, so the tree stays clean; the .deb lands in build/deb/ and
# lintian must report no error. DEB_VERSION=0.1.0-1+local1 builds a newer
# version of the same code (a debian/changelog entry in the copy);
# UPSTREAM_VERSION=0.1.1 also sets the Python package's version in the copy
# (a new upstream release, for the upgrade test: other code, so a restart).
DEB_APT := dpkg-dev debhelper dh-virtualenv lintian python3-dev \
           python3-venv libsystemd-dev pkg-config
DEB_DIR := build/deb
DEB_VERSION ?=
UPSTREAM_VERSION ?=
deb:
	@missing=$$(for p in $(DEB_APT); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	rm -rf $(DEB_DIR)/src && mkdir -p $(DEB_DIR)/src
	git ls-files -z -co --exclude-standard \
	  | xargs -0 sh -c 'for f; do [ -e "$$f" ] && printf "%s\0" "$$f"; done' - \
	  | tar --null -T - -cf - | tar -xf - -C $(DEB_DIR)/src
	cd $(DEB_DIR)/src && set -e; \
	if [ -n "$(UPSTREAM_VERSION)" ]; then \
	  sed -i 's/^version = ".*"/version = "$(UPSTREAM_VERSION)"/' pyproject.toml; \
	  sed -i 's/^__version__ = ".*"/__version__ = "$(UPSTREAM_VERSION)"/' src/wanbalanced/__init__.py; \
	fi; \
	if [ -n "$(DEB_VERSION)" ]; then \
	  { echo "wanbalanced ($(DEB_VERSION)) $$(dpkg-parsechangelog -S Distribution); urgency=medium"; \
	    echo; echo "  * Local build (make deb DEB_VERSION=$(DEB_VERSION))."; echo; \
	    echo " -- $$(dpkg-parsechangelog -S Maintainer)  $$(date -R)"; echo; \
	    cat debian/changelog; } > debian/changelog.new && mv debian/changelog.new debian/changelog; \
	fi; \
	upstream=$$(dpkg-parsechangelog -S Version | sed 's/-[^-]*$$//'); \
	python=$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml); \
	if [ "$$upstream" != "$$python" ]; then \
	  echo "debian/changelog's upstream version $$upstream is not pyproject.toml's $$python"; exit 1; \
	fi; \
	dpkg-buildpackage -us -uc -b
	@cd $(DEB_DIR) && changes=wanbalanced_$$(cd src && dpkg-parsechangelog -S Version)_$$(dpkg --print-architecture).changes; \
	echo "lintian $$changes"; lintian --fail-on error --info $$changes || exit 1; \
	rm -rf src; ls -l $(DEB_DIR)/*.deb 2>/dev/null || ls -l *.deb

# The systemd unit end to end (tests/e2e/): the README's "Install with systemd"
# in a Debian 12 booted with real systemd in User-Mode Linux (see lab/systemd/).
# Its root is built once with mmdebstrap and cached in /var/cache/wanbalanced-lab.
# It also installs the Debian package there (tests/e2e/test_deb.py), upgrades
# it to a newer build of the same code (a reload) and to newer code (a
# restart), and purges it: e2e-debs builds the three with `make deb`.
DEB_ARCH = $(shell dpkg --print-architecture)
DEB_BASE = $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)
UPSTREAM = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
E2E_DEBS = wanbalanced_$(DEB_BASE)_$(DEB_ARCH).deb \
           wanbalanced_$(DEB_BASE)+e2e1_$(DEB_ARCH).deb \
           wanbalanced_$(UPSTREAM)+e2e2-1_$(DEB_ARCH).deb
.PHONY: e2e e2e-debs
e2e-debs:
	$(MAKE) deb
	$(MAKE) deb DEB_VERSION=$(DEB_BASE)+e2e1
	$(MAKE) deb DEB_VERSION=$(UPSTREAM)+e2e2-1 UPSTREAM_VERSION=$(UPSTREAM)+e2e2

e2e: deps e2e-debs
	@dpkg -s mmdebstrap >/dev/null 2>&1 || { echo "installing Debian packages: mmdebstrap"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap; }
	WB_LAB_REQUIRED=1 WB_DEB_DIR=$(CURDIR)/$(DEB_DIR) WB_DEBS="$(E2E_DEBS)" \
	  $(BIN)/python -m pytest -v -p no:cacheprovider tests/e2e

test: typecheck unit lab e2e

demo: deps
	$(BIN)/python -m lab.uml -- $(BIN)/python -m lab.demo

clean:
	rm -rf $(VENV) .lab build *.egg-info src/*.egg-info

# The benchmark suite (bench/, docs/benchmarks.md): every contender in one lab
# guest, one after another, on the same lines; raw results in bench/results/.
# Besides the lab it needs the other contenders, ifplugd and teamd (Debian
# packages ifplugd and libteam-utils: installed if apt-cache policy offers
# them, else their contenders are reported as not run), and matplotlib for the
# plot (the `bench` extra, host side only). Settings: WB_BENCH_* variables.
BENCH_APT := ifplugd libteam-utils
.PHONY: bench
bench: $(STAMP)
	@missing=$$(for p in $(BENCH_APT); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  offered() { apt-cache policy "$$1" 2>/dev/null | grep -q 'Candidate: [^(]'; }; \
	  for p in $$missing; do offered $$p || { apt-get update -q; break; }; done; \
	  avail=""; for p in $$missing; do \
	    if offered $$p; then avail="$$avail $$p"; else echo "bench: no Debian package $$p here; its contenders will not run"; fi; \
	  done; \
	  if [ -n "$$avail" ]; then \
	    echo "installing Debian packages:$$avail"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$avail \
	      || echo "bench: could not install$$avail; their contenders will not run"; \
	  fi; \
	fi
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench
