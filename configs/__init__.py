"""Configuration files shipped with Live DMD: `configs/model/*.yaml` (DMD hyper-parameters) and
`configs/pipeline/*.yaml` (the live pipeline)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """Path of a shipped configuration, e.g. `path("model/mosi_aligned.yaml")`; a bare model name
    such as "mosi_aligned" also works."""
    candidate = ROOT / name
    if candidate.is_file():
        return candidate
    for guess in (ROOT / "model" / f"{name}.yaml", ROOT / f"{name}.yaml"):
        if guess.is_file():
            return guess
    shipped = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.yaml"))
    raise FileNotFoundError(f"no shipped configuration {name!r}; shipped: {', '.join(shipped)}")
