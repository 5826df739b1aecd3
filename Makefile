# segstream: the two commands from the README, plus helpers.
#   make run    set up (idempotent, apt included) and run the main job
#   make test   set up and run the test suite (what CI runs)
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
SOURCE ?= test://smpte?width=480&height=360&fps=30
PUBLISH ?= tcp://*:5555
PREVIEW ?= 8080
ARGS ?=

.PHONY: setup run preview test test-py310 kernels lint bench gpu-checks clean

setup:
	@bash scripts/setup.sh

# The main job: camera in, label maps out over ZeroMQ, live FPS/latency on the terminal.
# Override the camera with e.g. make run SOURCE=rtsp://cam.local/stream
run: setup
	$(BIN)/segstream run --source '$(SOURCE)' --publish '$(PUBLISH)' $(ARGS)

# The main job with the live browser preview: open http://127.0.0.1:8080/ (this machine
# only; PREVIEW=0.0.0.0:8080 serves every interface, without authentication).
preview: setup
	$(BIN)/segstream run --source '$(SOURCE)' --publish '$(PUBLISH)' --preview '$(PREVIEW)' $(ARGS)

test: setup
	@bash scripts/test.sh

# Only the Python 3.10 runtime-only leg (no torch), which `make test` runs last.
test-py310: setup
	@bash scripts/test_py310.sh

# Rebuild the precompiled CUDA kernels (engines/cuda/prebuilt) after editing engines/cuda.
kernels:
	$(BIN)/python scripts/build_kernels.py

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/segstream bench $(ARGS)

gpu-checks:
	bash tests/gpu/run_gpu_checks.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
