"""Training and evaluation: MMSA data, DMD's losses, the metrics, the training loop.

- `data`: MMSA-format pickles (aligned_50.pkl / unaligned_50.pkl, and `dmd extract`'s) into splits
- `losses`: the DMD loss terms (task, decoupling, reconstruction, graph distillation)
- `metrics`: the MOSI/MOSEI regression metrics (MAE, Corr, Acc-2, F1, Acc-7, ...)
- `train`: the training loop over seeds, model selection on valid, checkpoints, evaluation
- `synthetic`: a generated MMSA-format sample (for tests and `dmd train --synthetic`)
"""
