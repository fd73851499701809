"""bench.mpq row definitions: each ablation row builds the config it claims."""

from argparse import Namespace

from bench.mpq import LABELS, ROW_DEFS, ROWS, build_row, row_config
from edgediff.methods.mpqdm import fp_island_names
from tests.edgediff.methods.tiny import SCHED, tiny_unet

ARGS = Namespace(steps=2, updates=2, batch=2, train_seed=0)


def test_every_row_has_a_label_and_a_known_method():
    assert ROWS[0] == "fp" and set(LABELS) == set(ROWS)
    assert {r.method for r in ROW_DEFS.values()} == {"fp", "ptq", "efficientdm", "mpqdm", "mpqdmv2"}


def test_ablation_rows_switch_exactly_their_option():
    fp = tiny_unet()
    ref, _ = row_config("mpqdm-omq-trd", fp, "W4A8", ARGS)
    for name, field, value in [
        ("mpqdm-omq-trd-window", "trd_mode", "window"),
        ("mpqdm-omq-trd-detach", "trd_detach", True),
    ]:
        cfg, recipe = row_config(name, fp, "W4A8", ARGS)
        assert recipe is None and getattr(cfg, field) == value and getattr(ref, field) != value
        assert {k: v for k, v in vars(cfg).items() if k != field} == {
            k: v for k, v in vars(ref).items() if k != field
        }
    omq, _ = row_config("mpqdm-omq", fp, "W4A8", ARGS)
    bare, _ = row_config("mpqdm-omq-noislands", fp, "W4A8", ARGS)
    assert omq.fp_islands and not bare.fp_islands and (omq.trd, bare.trd) == (False, False)
    full, _ = row_config("mpqdmv2-full", fp, "W2A4", ARGS)
    zero, _ = row_config("mpqdmv2-full-zeroinit", fp, "W2A4", ARGS)
    assert (full.lora_init, zero.lora_init) == ("svd", "zero")
    assert full.lora_mode == zero.lora_mode == "additive" and full.additive_rank == zero.additive_rank
    assert zero.mtrd and zero.trd and zero.residual


def test_efficientdm_with_islands_keeps_exactly_mpqdms_float_layers():
    fp = tiny_unet()
    islands = fp_island_names(fp)
    assert islands
    plain, _ = row_config("efficientdm", fp, "W4A8", ARGS)
    cfg, recipe = row_config("efficientdm-islands", fp, "W4A8", ARGS)
    assert cfg == plain and all(recipe.match(n) == (True, None) for n in islands)
    from bench.mpq import storage_record

    model, per_step, _ = build_row("efficientdm-islands", fp, SCHED, "W4A8", ARGS)
    storage = storage_record(model)
    assert per_step and storage["stored"]["float_layers"] == islands
    assert storage["fp16"]["bits_per_weight"] < storage["stored"]["bits_per_weight"]
