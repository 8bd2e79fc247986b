# Live DMD: the two commands a new user runs are `make demo` and `make test`.
# Both create .venv and install what is missing into it first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first and pinned: 2.13.0 is the release this project is tested with. On a
# machine without a GPU, `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` avoids the
# multi-gigabyte CUDA build.
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
PIP_TORCH   := $(BIN)/pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"

.PHONY: demo test install install-dev lint bench fidelity default-checkpoint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(PIP_TORCH)
	$(BIN)/pip install -e ".[live]"
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(PIP_TORCH)
	$(BIN)/pip install -e ".[dev]"
	@touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The main job: the live pipeline on the bundled clip (embedded Redis, default checkpoint).
demo: $(VENV)/.installed
	$(BIN)/dmd demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

bench: $(VENV)/.installed-dev
	@test -n "$(DMD_OFFICIAL)" || (echo "set DMD_OFFICIAL=/path/to/a/checkout/of/github.com/mdswyz/DMD"; exit 2)
	$(BIN)/python bench/speed.py --official "$(DMD_OFFICIAL)"

fidelity: $(VENV)/.installed-dev
	@test -n "$(DMD_OFFICIAL)" || (echo "set DMD_OFFICIAL=/path/to/a/checkout/of/github.com/mdswyz/DMD"; exit 2)
	$(BIN)/python bench/fidelity.py --official "$(DMD_OFFICIAL)"

# The shipped default checkpoint (dmd_model/checkpoints/default.pt) from the CMU-MOSI and CMU-MOSEI
# transcripts: text-only extraction in the live profile, training on both train splits (selection
# on valid), release as fp16 with the test metrics of each data set. About an hour on 2 CPU cores.
LABELS  ?= ../shared/data/labels
DC      := runs/default-checkpoint
default-checkpoint: $(VENV)/.installed-dev
	@test -f "$(LABELS)/mosi_label.csv" -a -f "$(LABELS)/mosei_label.csv" || \
		(echo "set LABELS=/folder/with/mosi_label.csv+mosei_label.csv (the MMSA transcripts)"; exit 2)
	$(BIN)/dmd extract --text-only "$(LABELS)/mosi_label.csv" "$(LABELS)/mosei_label.csv" -o $(DC)/train_text.pkl
	$(BIN)/dmd extract --text-only "$(LABELS)/mosi_label.csv" --splits test -o $(DC)/mosi_text.pkl
	$(BIN)/dmd extract --text-only "$(LABELS)/mosei_label.csv" --splits test -o $(DC)/mosei_text.pkl
	$(BIN)/dmd train --config live_text --data $(DC)/train_text.pkl --out $(DC)/train
	$(BIN)/dmd release $(DC)/train/seed_1111/best.pt --out dmd_model/checkpoints/default.pt \
		--eval mosi=$(DC)/mosi_text.pkl --eval mosei=$(DC)/mosei_text.pkl

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
