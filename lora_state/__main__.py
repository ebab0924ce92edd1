"""Command line: `python -m lora_state demo` and `python -m lora_state bench [--quick]`.

Each command is an argparse subcommand. `bench` is the benchmark package `lora_state_bench` (a sibling of this
package in a checkout, outside the runtime path), imported only when the command runs; it is the same as
`python -m lora_state_bench`.
"""
from __future__ import annotations

import argparse
import sys

BENCH_MISSING = ("the benchmark is the package lora_state_bench, next to lora_state in a checkout of the "
                 "repository (or pip install -e . from one); it could not be imported here: {error}")


def _bench():
    try:
        import lora_state_bench.cli as bench
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] != "lora_state_bench":
            raise       # the package is there but one of its own dependencies is missing: say which
        return None, exc
    return bench, None


def build_parser(argv=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lora_state", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("demo", help="show stale weights from a naive patcher vs LoRA State, each mode's error/time")
    help_text = "switching benchmark vs full re-patch and PEFT fuse/unfuse (package lora_state_bench)"
    wants_bench = argv is None or "bench" in argv or any(a in ("-h", "--help") for a in argv)
    bench = _bench()[0] if wants_bench else None
    if bench is None:   # not needed here, or not importable (main() says so when `bench` is asked for)
        commands.add_parser("bench", help=help_text)
    else:
        from lora_state_bench import __doc__ as bench_doc
        bench_parser = commands.add_parser("bench", help=help_text, description=bench_doc,
                                           formatter_class=argparse.RawDescriptionHelpFormatter)
        bench.add_arguments(bench_parser)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        bench, error = _bench()
        if bench is None:
            print(BENCH_MISSING.format(error=error), file=sys.stderr)
            return 2
    args = build_parser(argv).parse_args(argv)
    if args.command == "demo":
        from .demo import run
        run()
        return 0
    return int(_bench()[0].main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
