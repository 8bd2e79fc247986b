"""The fast paths beside the network: attention and dropout as the network calls them.

- `attention`: scaled dot-product attention for the transformer's heads (PyTorch operations)
- `native`: the fused C++ attention kernel of the CPU (`csrc/attention.cpp`), built at first use,
  with `attention` as its fallback
- `dropout`: dropout masks as keep bits from SplitMix64 draws (one generator for every path)
- `stacked`: the stacked members' projections (batched or one GEMM per member), their attention
  (all members at once) and the in-place inference feed-forward, as `network.transformer` calls them
"""
