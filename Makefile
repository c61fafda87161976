# Build and test tooling for the containerhost.overlayfs collection.
#
#   make setup        .venv (Python 3.13, requirements/dev.txt), the Debian test packages, the collection layout, the
#                     target Pythons (.cache/pythons), a venv per ansible-core line for ansible-test
#   make lock         re-resolve the lock files requirements/*.txt after an .in changed, and the Debian Python's
#                     requirements/*.lock after its .list did (scripts/lock.sh); make lock-upgrade: the newest
#                     versions every .in and .list allows; both print each pin that changed
#   make demo         scripts/demo.sh
#   make unit         pytest tests/unit
#   make integration  pytest tests/integration (the tests enter private mount namespaces; run as root)
#   make sanity       mypy, then ansible-test sanity and units with each ansible-core line, on a copy of the tree (see
#                     below)
#   make mypy         the type checker over module_utils and plugin_utils (mypy.ini)
#   make vm-image     build (or reuse the cached) Debian 12 and 13 test VM images, in parallel: tests/vm/build-image.sh
#   make vm-test      pytest tests/vm on each release, in parallel: tests in QEMU VMs (nbd, systemd, reboots);
#                     see docs/testing-vm.md
#   make vm-test-arm64  the arm64 smoke run: builds (or reuses) the Debian 13 arm64 image and runs
#                     tests/vm/test_arm64_smoke.py in it under qemu-system-aarch64; not part of `make test`
#   make molecule     the role's localhost scenario (extensions/molecule/localhost), in a private mount namespace
#   make test         setup, then unit, integration, molecule, vm-test, sanity, lint, galaxy-importer and
#                     execution-environment; non-zero exit if any fails
#                     (the VM images build in the background from the start: integration's oracles need them)
#   make galaxy-importer  the checker Galaxy runs on upload, over the tarball (scripts/galaxy-importer.sh)
#   make lint         ansible-lint, production profile (.ansible-lint), and antsibull-changelog lint
#   make execution-environment  ansible-builder introspect and create over meta/execution-environment.yml
#   make bench        benchmarks/: the module as N grows against a bash mount loop, a no-op task and an
#                     ansible.posix.mount loop; the role against the module; many hosts (ratios, a plot)
#   make pictures     redraw the docs' layer-stack pictures (docs/pictures) and their links: tests/helpers/doc_pictures.py
#   make docs-rst     the pictures, then the guides' RST for the docsite (docs/docsite/rst): scripts/docsite.py
#   make docs         the docsite from the tarball (antsibull-docs, Sphinx), warnings and links checked: scripts/docsite.sh
#   make clean        remove .venv, .cache and tests/output
#
# Every target works from a fresh clone, run as root.

SHELL := /bin/bash
# The Debian releases the VM tests and the persistence oracles run on (tests/helpers/vm.py RELEASES).
VM_RELEASES := bookworm trixie
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

# The Python the tooling runs on (the controller): ansible-core 2.22 needs 3.13 or newer, 2.20 and 2.21 3.12 or newer.
CONTROLLER_PYTHON := 3.13
PYTHON ?= $(shell scripts/python-path.sh $(CONTROLLER_PYTHON) 2>/dev/null)
# The target Pythons the collection supports. make setup links those this machine has into .cache/pythons/bin, and
# Debian's build of those requirements/debian-pythonX.Y.lock pins (3.14) where it has none (it says why of any
# left): ansible-test sanity's compile and import tests take them from there, and the module, the info module and the
# role run on each (tests/integration/test_target_pythons.py). The unit tests also run on the oldest
# (requirements/units-py3.9.txt).
TARGET_PYTHONS := 3.9 3.10 3.11 3.12 3.13 3.14
OLDEST_TARGET_PYTHON := $(firstword $(TARGET_PYTHONS))
PYTHONS_DIR := $(CURDIR)/.cache/pythons/bin
# The ansible-core lines, one lock each (requirements/ansible-test-LINE.txt): make sanity runs ansible-test sanity and
# units with each; the newest is .venv's, which the other suites run on. meta/runtime.yml states the range.
ANSIBLE_LINES := $(patsubst requirements/ansible-test-%.txt,%,$(wildcard requirements/ansible-test-*.txt))
NEWEST_LINE := $(lastword $(ANSIBLE_LINES))
# uv makes the lock files and syncs every venv to its lock; it is installed with pip, pinned here.
UV_VERSION := 0.13.8
UV := $(CURDIR)/.cache/uv-$(UV_VERSION)/bin/uv
export UV_PYTHON_DOWNLOADS := never

VENV := $(CURDIR)/.venv
VENV_PYTHON := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
LINE_STAMPS := $(foreach line,$(ANSIBLE_LINES),$(CURDIR)/.cache/ansible-test-$(line)-venv/.installed)
OLDEST_UNITS_VENV := $(CURDIR)/.cache/units-py$(OLDEST_TARGET_PYTHON)-venv

# ansible and ansible-test want a collection at a path ending in ansible_collections/NAMESPACE/NAME.
# For ansible (ansible-playbook, ansible, ansible-doc, the tests) a symlink to the repo root is enough.
COLLECTIONS_ROOT := $(CURDIR)/.cache/collections
COLLECTION_LINK := $(COLLECTIONS_ROOT)/ansible_collections/containerhost/overlayfs
# ansible-test does not accept the symlink: it takes os.getcwd(), which resolves symlinks to the repo root,
# and then fails with 'No "ansible_collections" parent directory was found'. So sanity runs on a copy.
SANITY_COPY := $(CURDIR)/.cache/sanity/ansible_collections/containerhost/overlayfs

# Debian packages the tests need: util-linux (mount, umount, losetup, findmnt, unshare),
# e2fsprogs (mkfs.ext4), shellcheck (ansible-test sanity's shellcheck test for *.sh files), qemu-utils (qemu-img,
# qemu-nbd), qemu-system-common (qemu-storage-daemon, for image layers served through FUSE) and uidmap (newuidmap,
# which unshare --map-users runs to enter idmapped trees as a container would), patchelf (Debian's Python 3.14 pointed
# at its own C library: scripts/debian_python.py).
DEB_PACKAGES := util-linux e2fsprogs shellcheck qemu-utils qemu-system-common uidmap patchelf

# Prepended once (recursive make calls inherit the already-prepended values).
ifeq ($(filter $(VENV)/bin,$(subst :, ,$(PATH))),)
export PATH := $(VENV)/bin:$(PATH)
endif
# Lets pytest import ansible_collections.containerhost.overlayfs.* directly; ansible itself uses
# ANSIBLE_COLLECTIONS_PATH.
ifeq ($(filter $(COLLECTIONS_ROOT),$(subst :, ,$(PYTHONPATH))),)
export PYTHONPATH := $(COLLECTIONS_ROOT)$(if $(PYTHONPATH),:$(PYTHONPATH))
endif
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS_ROOT)

# Sanity tests that are skipped, each with the reason:
#   pslint: needs PowerShell (pwsh), which neither Debian nor PyPI provides here; the collection
#           targets Linux only and has no .ps1/.psm1/.psd1 files.
SANITY_SKIP := pslint
SANITY_ARGS := --local $(foreach t,$(SANITY_SKIP),--skip-test $(t))

.PHONY: setup venv controller-python target-pythons debian-packages collection-layout ansible-test-venvs demo unit \
	integration sanity mypy test bench clean vm-image vm-test vm-test-arm64 molecule galaxy-importer lint \
	execution-environment pictures docs-rst docs lock lock-upgrade

setup: venv debian-packages collection-layout target-pythons ansible-test-venvs

controller-python:
	@test -n "$(PYTHON)" || { scripts/python-path.sh $(CONTROLLER_PYTHON); exit 1; }

$(UV):
	$(or $(PYTHON),python3) -m pip install --quiet --root-user-action=ignore --target $(CURDIR)/.cache/uv-$(UV_VERSION) uv==$(UV_VERSION)

venv: $(VENV_STAMP)

# Each venv holds exactly its lock (scripts/venv.sh): remade when its lock changes or it was made with another Python.
$(VENV_STAMP): requirements/dev.txt | controller-python $(UV)
	UV=$(UV) scripts/venv.sh $(VENV) $(PYTHON) $<
	@touch $@

$(CURDIR)/.cache/%-venv/.installed: requirements/%.txt | controller-python $(UV)
	UV=$(UV) scripts/venv.sh $(@D) $(PYTHON) $<
	@touch $@

$(OLDEST_UNITS_VENV)/.installed: requirements/units-py$(OLDEST_TARGET_PYTHON).txt | target-pythons $(UV)
	UV=$(UV) scripts/venv.sh $(@D) $(PYTHONS_DIR)/python$(OLDEST_TARGET_PYTHON) $<
	@touch $@

# The lock files (scripts/lock.sh): after an .in changed, and to take the newest versions.
lock: $(UV)
	scripts/lock.sh $(UV)

lock-upgrade: $(UV)
	scripts/lock.sh $(UV) --upgrade

# Links to the target Pythons: the machine's, else Debian's build where requirements/debian-pythonX.Y.lock pins one
# (scripts/debian_python.py; 3.14, which pyenv lacks here); for each it still lacks, why (its tests are skipped,
# saying so).
target-pythons: debian-packages | controller-python
	@mkdir -p $(PYTHONS_DIR); missing=(); \
	for version in $(TARGET_PYTHONS); do \
	  if found=$$(scripts/python-path.sh $$version 2>/dev/null) || { test -f requirements/debian-python$$version.lock && \
	      found=$$($(PYTHON) scripts/debian_python.py install $$version $(CURDIR)/.cache/debian-python$$version); }; then \
	    ln -sfn "$$found" $(PYTHONS_DIR)/python$$version; \
	  else rm -f $(PYTHONS_DIR)/python$$version; missing+=("$$(scripts/python-path.sh $$version 2>&1 || true)"); fi; \
	done; \
	for line in "$${missing[@]}"; do echo "target Pythons: $$line. The tests on it are skipped, saying so." >&2; done

debian-packages:
	@missing=(); \
	for pkg in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q '^install ok installed$$' || missing+=("$$pkg"); \
	done; \
	if [ "$${#missing[@]}" -gt 0 ]; then \
	  echo "Installing Debian packages: $${missing[*]}"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq; \
	  apt-get install -y -qq --no-install-recommends "$${missing[@]}" >/dev/null; \
	fi

collection-layout:
	@mkdir -p $(dir $(COLLECTION_LINK))
	@# The link lives in .cache/collections/ansible_collections/containerhost/; four levels up is the repo root.
	@if [ "$$(readlink $(COLLECTION_LINK) || true)" != "../../../.." ]; then \
	  rm -rf $(COLLECTION_LINK); ln -s ../../../.. $(COLLECTION_LINK); \
	fi
	@test -f $(COLLECTION_LINK)/galaxy.yml

# A venv per ansible-core line, each with what lets its ansible-test run offline (scripts/ansible-test-offline.sh),
# and the oldest target Python's venv for the unit tests.
ansible-test-venvs: $(LINE_STAMPS) $(OLDEST_UNITS_VENV)/.installed
	@for line in $(ANSIBLE_LINES); do scripts/ansible-test-offline.sh .cache/ansible-test-$$line-venv $(CONTROLLER_PYTHON); done

demo: setup
	bash scripts/demo.sh

pictures: setup
	$(VENV_PYTHON) -m ansible_collections.containerhost.overlayfs.tests.helpers.doc_pictures

unit: setup
	$(VENV_PYTHON) -m pytest tests/unit -q -rs

# The session runs in a private mount namespace: every mount the tests make dies with it.
integration: setup
	unshare --mount --propagation private $(VENV_PYTHON) -m pytest tests/integration -q -rs

# The role's fast scenario: localhost, in a private mount namespace, persistence under a scratch root.
molecule: setup
	cd extensions && $(VENV)/bin/molecule reset -s localhost && unshare --mount --propagation private $(VENV)/bin/molecule test -s localhost

# Each tool set in a venv of its own, .cache/NAME-venv from requirements/NAME.txt (the pattern rule above): the
# ecosystem's tools (tools; galaxy-importer pins its own ansible-lint) and the docsite's (docs: antsibull-docs, Sphinx,
# pandoc).
TOOLS_VENV := $(CURDIR)/.cache/tools-venv
TOOLS_STAMP := $(TOOLS_VENV)/.installed

# galaxy-importer over the Galaxy tarball (scripts/galaxy-importer.sh): no error, no warning.
galaxy-importer: setup $(TOOLS_STAMP)
	bash scripts/galaxy-importer.sh

# meta/execution-environment.yml as ansible-builder reads it (scripts/execution-environment.sh): introspect and
# create, no image build.
execution-environment: setup $(TOOLS_STAMP)
	bash scripts/execution-environment.sh

# ansible-lint (production profile, .ansible-lint) over the role, the examples, the molecule scenarios and every
# playbook; antsibull-changelog lint over the changelog and its fragments.
lint: setup $(TOOLS_STAMP)
	PATH=$(TOOLS_VENV)/bin:$$PATH ansible-lint
	$(TOOLS_VENV)/bin/antsibull-changelog lint

DOCS_VENV := $(CURDIR)/.cache/docs-venv
DOCS_STAMP := $(DOCS_VENV)/.installed

docs-rst: pictures $(DOCS_STAMP)
	$(DOCS_VENV)/bin/python scripts/docsite.py write

docs: setup $(DOCS_STAMP)
	bash scripts/docsite.sh

# Not part of `make test`: a benchmark prints ratios, it asserts nothing (benchmarks/, figures in
# docs/performance.md). It runs from .cache/bench-venv (the development venv's tools and matplotlib). The peer
# ansible.posix.mount comes from the `ansible` package on PyPI (the Galaxy server may be out of reach), unpacked
# apart from every venv so that no test sees its collections.
BENCH_VENV := $(CURDIR)/.cache/bench-venv
BENCH_COLLECTIONS := $(CURDIR)/.cache/bench-collections
BENCH_STAMP := $(BENCH_COLLECTIONS)/.installed
BENCH_ENV := PATH=$(BENCH_VENV)/bin:$(PATH) ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS_ROOT):$(BENCH_COLLECTIONS) \
	PYTHONPATH=$(PYTHONPATH):$(CURDIR)/benchmarks

$(BENCH_STAMP): requirements/bench-collections.txt | $(UV)
	$(UV) pip install --quiet --no-deps --python $(VENV_PYTHON) --target $(BENCH_COLLECTIONS) -r $<
	@touch $@

bench: setup $(BENCH_VENV)/.installed $(BENCH_STAMP)
	$(BENCH_ENV) unshare --mount --propagation private $(BENCH_VENV)/bin/python benchmarks/bench_scale.py
	$(BENCH_ENV) unshare --mount --propagation private $(BENCH_VENV)/bin/python benchmarks/bench_role.py
	$(BENCH_ENV) unshare --mount --propagation private $(BENCH_VENV)/bin/python benchmarks/bench_hosts.py

# With each ansible-core line (its venv first on PATH): ansible-test sanity, its compile and import tests on every
# target Python in .cache/pythons/bin, and ansible-test units on the controller Python; with the newest line, units on
# the oldest target Python too (the tests of what runs on targets). Every venv comes from a lock: --local, never
# --requirements, whose installs would take whatever PyPI has that day.
# The copy holds what ansible-test itself would test in place: the files git lists (tracked, plus untracked
# ones that .gitignore does not exclude), less those deleted from the work tree. It gets its own empty git
# repository, since otherwise ansible-test would find the repo's .git above it, in which .cache is ignored,
# and see no files at all.
sanity: setup mypy
	@rm -rf $(SANITY_COPY)
	@mkdir -p $(SANITY_COPY)
	@bash scripts/copy-tree.sh $(SANITY_COPY)
	@git -C $(SANITY_COPY) -c init.defaultBranch=main init -q
	@cd $(SANITY_COPY) && for line in $(ANSIBLE_LINES); do \
	  echo "==> ansible-core $$line: ansible-test sanity and units"; \
	  env -u ANSIBLE_COLLECTIONS_PATH -u PYTHONPATH PATH=$(CURDIR)/.cache/ansible-test-$$line-venv/bin:$(PYTHONS_DIR):$$PATH \
	    sh -c 'ansible-test sanity $(SANITY_ARGS) && ansible-test units --local --python $(CONTROLLER_PYTHON)' || exit 1; \
	done
	cd $(SANITY_COPY) && env -u ANSIBLE_COLLECTIONS_PATH -u PYTHONPATH \
	  PATH=$(CURDIR)/.cache/ansible-test-$(NEWEST_LINE)-venv/bin:$$PATH ansible-test units --local \
	  --python $(OLDEST_TARGET_PYTHON) --python-interpreter $(OLDEST_UNITS_VENV)/bin/python

# mypy over module_utils and plugin_utils, from the collection layout (mypy.ini says what it checks).
MYPY_PACKAGES := $(foreach layer,module_utils plugin_utils,-p ansible_collections.containerhost.overlayfs.plugins.$(layer))
mypy: setup
	cd $(COLLECTIONS_ROOT) && $(VENV)/bin/mypy --config-file $(CURDIR)/mypy.ini $(MYPY_PACKAGES)

# The VM images are cached in ${OVERLAYFS_VM_CACHE:-/var/cache/containerhost-overlayfs-vm}/RELEASE; each is rebuilt
# (about two minutes) only when tests/vm/build-image.sh changes. build-image.sh installs its own host packages.
# Both build at once (a lock per release; a second caller waits for the first).
vm-image:
	@pids=(); for release in $(VM_RELEASES); do bash tests/vm/build-image.sh "$$release" & pids+=($$!); done; \
	status=0; for pid in "$${pids[@]}"; do wait "$$pid" || status=1; done; exit $$status

# One pytest session per release, at the same time: each keeps about one core busy, its guest's emulated CPU and the
# ansible-playbook runs that drive it. Each line of output carries its release.
vm-test: setup vm-image
	@pids=(); for release in $(VM_RELEASES); do \
	  ( set -o pipefail; $(VENV_PYTHON) -m pytest tests/vm -v -p no:cacheprovider --durations=0 --vm-release "$$release" 2>&1 \
	    | sed -u "s/^/[$$release] /" ) & pids+=($$!); \
	done; \
	status=0; for pid in "$${pids[@]}"; do wait "$$pid" || status=1; done; exit $$status

# An arm64 guest on this x86_64 host is emulated instruction by instruction: its image takes about 20 minutes to build,
# and each module run in it tens of seconds (docs/testing-vm.md), so the smoke run is a target of its own, not part of
# `make test`.
vm-test-arm64: setup
	bash tests/vm/build-image.sh trixie --arch arm64
	$(VENV_PYTHON) -m pytest tests/vm -v -p no:cacheprovider --vm-arch arm64

# Runs all the suites even when one fails, then fails if any did, and says how long each took. The VM suite is the
# longest (every guest instruction is emulated): it starts as soon as its images are built and runs beside the others,
# its lines carrying their release.
test: setup
	@timed() { local start=$$SECONDS status=0; echo "==> make $$1"; $(MAKE) --no-print-directory "$$1" || status=$$?; \
	  echo "==> make $$1: $$([ "$$status" = 0 ] && echo ok || echo FAILED) in $$((SECONDS - start)) s"; return "$$status"; }; \
	{ $(MAKE) --no-print-directory vm-image >.cache/vm-image.log 2>&1; timed vm-test; } & vm_test=$$!; \
	failed=(); \
	for suite in unit integration molecule sanity lint galaxy-importer execution-environment docs; do \
	  timed "$$suite" || failed+=("$$suite"); \
	done; \
	wait "$$vm_test" || failed+=(vm-test); \
	if [ "$${#failed[@]}" -gt 0 ]; then echo "make test: FAILED: $${failed[*]} ($$SECONDS s)"; exit 1; fi; \
	echo "make test: unit, integration, molecule, vm-test, sanity, lint, galaxy-importer, execution-environment and docs all succeeded in $$SECONDS s after setup"

clean:
	rm -rf $(VENV) .cache tests/output .pytest_cache
