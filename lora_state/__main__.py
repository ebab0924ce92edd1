"""Command line: `python -m lora_state demo` and `python -m lora_state bench [--quick]`.

Each command is an argparse subcommand; `bench` lives in bench.py (``add_arguments(parser)``, ``main(args)``).
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lora_state", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("demo", help="show stale weights from a naive patcher vs LoRA State, each mode's error/time")

    from . import bench
    bench_parser = commands.add_parser("bench", help="switching benchmark vs full re-patch and PEFT fuse/unfuse",
                                       description=bench.__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(bench_parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run
        run()
        return 0
    from .bench import main as bench_main
    return int(bench_main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
