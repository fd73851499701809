"""Fake quantization of diffusion models: primitives, quantizers, layers, recipes, calibration.

See docs/quantization.md. Typical use:

    recipe = default_recipe("W4A8", unet, a_mode="per_step")
    quantize_(unet, recipe, num_steps=20)
    calibrate(unet, collect_calibration(unet_fp, sched_cfg, num_samples=64, num_steps=20))
    save_quantized(unet, recipe, out, dict(unet.config), sched_cfg, meta={"method": "ptq"})
"""

from edgediff.bitspec import BitSetting
from edgediff.quant.calibration import CalibrationData, calibrate, collect_calibration
from edgediff.quant.io import load_quantized, save_quantized
from edgediff.quant.layers import QuantConv2d, QuantLayer, QuantLinear
from edgediff.quant.quantize import QuantReport, quant_disabled, quant_layers, quantize_, set_step
from edgediff.quant.quantizers import ActQuantizer, WeightQuantizer
from edgediff.quant.recipe import (
    LayerQuant,
    LoRASpec,
    LowRankSpec,
    Recipe,
    ResidualSpec,
    default_recipe,
)
from edgediff.quant.spec import QuantLayerSpec, dequant, dequant_weight
from edgediff.quant.storage import StorageReport, storage_bits

__all__ = [
    "ActQuantizer",
    "BitSetting",
    "CalibrationData",
    "LayerQuant",
    "LoRASpec",
    "LowRankSpec",
    "QuantConv2d",
    "QuantLayer",
    "QuantLayerSpec",
    "QuantLinear",
    "QuantReport",
    "Recipe",
    "ResidualSpec",
    "StorageReport",
    "WeightQuantizer",
    "calibrate",
    "collect_calibration",
    "default_recipe",
    "dequant",
    "dequant_weight",
    "load_quantized",
    "quant_disabled",
    "quant_layers",
    "quantize_",
    "save_quantized",
    "set_step",
    "storage_bits",
]
