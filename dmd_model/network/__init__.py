"""The DMD network: what a reader of the paper looks for.

- `dmd`: `DMD`, the model (feature projections, the decoupling encoders, the crossmodal and
  self-attention stacks, the two graph-distillation units, the heads), its forward pass read top
  to bottom like the paper's figure
- `transformer`: MulT's transformer encoder (`EncoderStack`) as DMD uses it
- `graph_distill`: the graph distillation units (HomoGD, HeteroGD) and their edge matrices

The fast paths these call (per-member projections, the fused attention kernel, dropout draws, the
in-place feed-forward) are in `dmd_model.kernels`.
"""
