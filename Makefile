# segedge: `make setup demo` runs the main job, `make setup test` the fast tests. Needs only python3 and pip access.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned and installed first: a bare `torch` requirement makes pip pick a multi-GB CUDA build on x86.
# Extra pip arguments for that one install (e.g. --index-url of a CPU-only torch index) go in TORCH_PIP_ARGS.
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
# export = torch side (onnx, onnxsim, onnxruntime, safetensors, matplotlib), openvino = OpenVINO + NNCF,
# coreml = coremltools (+ scikit-learn for palettes; conversion runs on Linux, prediction needs macOS), dev = tests.
# A device that only runs exported models needs none of these: see the README's "Install" (`pip install .[ort]`).
EXTRAS ?= export,openvino,coreml,dev
STAMP := $(VENV)/.segedge-setup
PYTEST_ARGS ?=
# The demo calibrates INT8 on CamVid train and measures mIoU on CamVid val when that folder exists (its licence
# keeps it out of this repository); otherwise on the synthetic frames shipped in segedge/assets/frames/ with no mIoU.
CAMVID ?= $(firstword $(wildcard ../shared/datasets/camvid) $(SEGEDGE_CAMVID))
DEMO_MODEL ?= b0
DEMO_DATA_ARGS := $(if $(CAMVID),--calib $(CAMVID)/train --val $(CAMVID) --val-count 101,)

.PHONY: setup demo test test-all clean-venv help

help:
	@echo "make setup     create $(VENV) (if missing) and install torch==$(TORCH_VERSION) + segedge[$(EXTRAS)]"
	@echo "make demo      run the main job: export the demo $(DEMO_MODEL) to ONNX FP32 + ONNX Runtime INT8 and print its checks"
	@echo "make test      fast tests (pytest, slow ones deselected)"
	@echo "make test-all  every test, slow ones included"

setup: $(STAMP)

# Re-runs only when pyproject.toml changes or the venv is new; an existing venv is reused, never recreated.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@
	@echo "setup done: $$($(BIN)/python -c 'import segedge, torch; print("segedge", segedge.__version__, "torch", torch.__version__)')"

demo: $(STAMP)
	$(BIN)/segedge models
	$(BIN)/segedge export --model $(DEMO_MODEL) --target ort-int8 --out exports/demo-$(DEMO_MODEL) $(DEMO_DATA_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
