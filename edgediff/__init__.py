"""edgediff: quantize, distill and customize diffusion models (train stage)."""

__version__ = "0.1.0"
