"""MCA-Ctrl: tuning-free subject customization by multi-party attention control (docs/customize.md).

Three DDIM processes run in one batch, subject, condition and target; the target's
self-attention is replaced by masked attention over the subject and the condition (SAGI early,
SALQ later; docs/methods.md section 5). Modules: `masks` (masks, token grids, localization),
`attention` (the formulas and the attention processors), `schedule` (step x layer modes),
`inversion` (deterministic DDIM inversion), `pipeline` (the two tasks), `cli`.
"""

from edgediff.customize.errors import CustomizeError

__all__ = ["CustomizeError"]
