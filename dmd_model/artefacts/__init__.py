"""What training produces and serving loads.

- `checkpoint`: the project's checkpoint file (weights, configuration, feature profile, data,
  metrics, code version) and `dmd info`'s description of it
- `official`: the official DMD state dicts (`.pth`), imported and exported with an explicit key map
- `predict`: `Predictor`, a checkpoint ready for inference (device, precision, batches of windows)
"""
