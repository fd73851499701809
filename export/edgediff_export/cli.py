"""The `edgediff` console script: the full toolchain (train + export + device profiles).

It lives in the export package because only `edgediff_export` may import every stage
(DESIGN.md section 1); the train stage registers its own commands via `add_train_commands`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from edgediff import __version__
from edgediff.cli import add_train_commands, run_command
from edgediff_runtime.errors import RuntimeStageError


def _cmd_devices_list(args: argparse.Namespace) -> int:
    from edgediff_runtime.devices import list_profiles, load_profile

    for name in list_profiles():
        profile = load_profile(name)
        print(f"{name:24s} {profile.description}")
    return 0


def _cmd_devices_show(args: argparse.Namespace) -> int:
    import json

    from edgediff_runtime.devices import load_profile

    print(json.dumps(load_profile(args.name).to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgediff",
        description="Quantize, distill and export diffusion models for edge devices.",
    )
    parser.add_argument("--version", action="version", version=f"edgediff {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_train_commands(sub)

    dev = sub.add_parser("devices", help="device profiles (devices/*.toml)")
    dev_sub = dev.add_subparsers(dest="dev_cmd", required=True)
    p = dev_sub.add_parser("list", help="list the known device profiles")
    p.set_defaults(func=_cmd_devices_list)
    p = dev_sub.add_parser("show", help="print one profile as JSON")
    p.add_argument("name", help="profile name (see 'edgediff devices list') or a path to a .toml file")
    p.set_defaults(func=_cmd_devices_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    return run_command(args, handled=(RuntimeStageError,))


if __name__ == "__main__":
    sys.exit(main())
