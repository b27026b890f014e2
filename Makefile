# nitro-emu: set up, build the guest images, test, benchmark.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
GUEST_DIR := build/guest

.PHONY: setup system-deps guest test test-unit bench demo clean

# System packages (apt) needed to build the guest images and run the reference checks.
system-deps:
	bash scripts/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m nitro_emu.cpu.fastpath >/dev/null || true   # native CPU hooks; Python ones if not
	touch $@

setup: system-deps $(VENV)/.installed

# All test images into build/guest/ (cached by a hash of guest/).
guest: setup
	$(PY) -m guest.build --out $(GUEST_DIR)

# Only what the demo needs (the tiny kernel), so `make demo` does not wait for every image.
hello.eif: setup
	$(PY) -m guest.build --out $(GUEST_DIR) --only hello
	cp $(GUEST_DIR)/hello.eif hello.eif

# Sets up everything and boots the demo enclave.
.PHONY: hello.eif
demo: hello.eif
	$(PY) -m nitro_emu hello.eif --guest-cid 8

test: guest
	$(PY) -m pytest -q

# Everything that needs no guest kernel or image (tests not marked `guest`): minutes, on a
# fresh machine, without `make guest`.
test-unit: $(VENV)/.installed
	$(PY) -m pytest -q -m "not guest"

bench: guest
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build hello.eif
