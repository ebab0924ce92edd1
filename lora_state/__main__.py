"""Command line: `python -m lora_state demo` and `python -m lora_state bench [--quick]`."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_state", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="show stale weights from a naive patcher vs LoRA State, each mode's error/time")
    bench = commands.add_parser("bench", help="switching benchmark vs full re-patch and PEFT fuse/unfuse",
                                add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    args, unknown = parser.parse_known_args(argv)
    if args.command == "demo":
        from .demo import run
        run()
        return 0
    from .bench import main as bench_main
    return bench_main(list(args.rest) + unknown)


if __name__ == "__main__":
    sys.exit(main())
