"""`edgediff demo`: the end-to-end demo on the bundled reference model.

Stage 1 (this issue): load the bundled model, sample a grid with seeded noise, evaluate it.
Later stages extend it: quantize -> export -> on-device runtime -> parity.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from edgediff import __version__
from edgediff.reference.evaluate import evaluate
from edgediff.utils.atomic import atomic_file


def run_demo(out: Path, samples: int = 500, steps: int = 20, seed: int = 0) -> dict:
    """Run the demo stages and write `out/report.json` and `out/samples.png`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fp = evaluate("reference", samples=samples, steps=steps, seed=seed, grid_out=out / "samples.png")
    report = {
        "edgediff": __version__,
        "host": platform.machine(),
        "stages": {"fp_reference": fp},
        "summary": {
            "fp_fd": round(fp["fd"], 2),
            "fp_confidence": round(fp["confidence"], 3),
            "samples": samples,
            "steps": steps,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    }
    with atomic_file(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report
