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

.PHONY: demo test install install-dev lint bench fidelity default-checkpoint clean $(DC)/check-labels-present

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

# The shipped default checkpoint (dmd_model/checkpoints/default.pt): DMD with two tasks (sentiment
# and the seven emotions) in the live profile live-v2, trained in one run on several corpora:
# the CMU-MOSI and CMU-MOSEI transcripts (sentiment; text only, with window-length word spans as
# well as whole utterances), the MELD transcripts (emotions; text only), RAVDESS speech (emotions;
# voice and words) and EmoDB (emotions; voice only: German). Splits by speaker (dmd convert) or the
# corpora's own. Release as fp16 with every test set's metrics. Run time in BENCHMARKS.md.
LABELS  ?= ../shared/data/labels
SPEECH  ?= ../shared/data/emotion_speech
DC      := runs/default-checkpoint
EXTRACT := $(BIN)/dmd extract --profile live-v2 --quiet
default-checkpoint: $(VENV)/.installed-dev $(DC)/sentiment.pkl $(DC)/mosi_test.pkl $(DC)/mosei_test.pkl \
		$(DC)/meld.pkl $(DC)/ravdess.pkl $(DC)/emodb.pkl
	$(BIN)/dmd train --config live_v2 --out $(DC)/train \
		--data sentiment=$(DC)/sentiment.pkl meld=$(DC)/meld.pkl ravdess=$(DC)/ravdess.pkl@8 emodb=$(DC)/emodb.pkl@4
	$(BIN)/dmd release $(DC)/train/seed_1111/best.pt --out dmd_model/checkpoints/default.pt \
		--eval mosi=$(DC)/mosi_test.pkl --eval mosei=$(DC)/mosei_test.pkl --eval meld=$(DC)/meld.pkl \
		--eval ravdess=$(DC)/ravdess.pkl --eval emodb=$(DC)/emodb.pkl

# each step writes its file only when it completes, so an interrupted run resumes where it stopped
$(DC)/%-labels-present:
	@test -f "$(LABELS)/mosi_label.csv" -a -f "$(LABELS)/mosei_label.csv" -a -d "$(LABELS)/meld" || \
		(echo "set LABELS=/folder/with/mosi_label.csv+mosei_label.csv+meld/ (the MMSA and MELD transcripts)"; exit 2)
	@test -d "$(SPEECH)/ravdess" -a -d "$(SPEECH)/emodb" || \
		(echo "set SPEECH=/folder/with/ravdess/+emodb/ (the RAVDESS speech and EmoDB wav files)"; exit 2)
$(DC)/sentiment.pkl: | $(VENV)/.installed-dev $(DC)/check-labels-present
	$(EXTRACT) --text-only --subspans 1 "$(LABELS)/mosi_label.csv" "$(LABELS)/mosei_label.csv" -o $@
$(DC)/mosi_test.pkl: | $(VENV)/.installed-dev $(DC)/check-labels-present
	$(EXTRACT) --text-only "$(LABELS)/mosi_label.csv" --splits test -o $@
$(DC)/mosei_test.pkl: | $(VENV)/.installed-dev $(DC)/check-labels-present
	$(EXTRACT) --text-only "$(LABELS)/mosei_label.csv" --splits test -o $@
$(DC)/%/label.csv: | $(VENV)/.installed-dev $(DC)/check-labels-present
	$(BIN)/dmd convert $* "$(if $(filter meld,$*),$(LABELS)/meld,$(SPEECH)/$*)" --out $(DC)/$*
$(DC)/meld.pkl: $(DC)/meld/label.csv
	$(EXTRACT) --text-only $< -o $@
$(DC)/ravdess.pkl $(DC)/emodb.pkl: $(DC)/%.pkl: $(DC)/%/label.csv
	$(EXTRACT) --workers 2 $(DC)/$* -o $@

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
