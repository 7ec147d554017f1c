"""``ttsgym``: one console command with a subcommand per stage.

Each ``cli/<stage>.py`` module exposes ``register(subparsers)``; commands call into the stage
packages and print. Errors a user can fix (bad input, missing slice) exit with status 2 and one
line naming the file, field or slice; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from ttsgym.store import AutoTTSFormatError, StoreError

COMMAND_MODULES = ("store_cmds", "synth_cmd", "eval_cmd", "report_cmd", "demo_cmd", "collect_cmd",
                   "search_cmd", "run_cmd", "serve_cmd")
USER_ERRORS = (AutoTTSFormatError, StoreError, FileNotFoundError, FileExistsError, ValueError,
               TypeError, KeyError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttsgym", description="Offline replay, controllers and search for test-time scaling.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"ttsgym.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["search", "report"]:  # a sub-command of `search`, whose own flags differ
        from ttsgym.cli.search_cmd import run_report

        return run_guarded("search report", lambda: run_report(argv[2:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_guarded(args.command, lambda: args.run(args))


def run_guarded(command: str, fn: Callable[[], int | None]) -> int:
    """Run a command: a user error prints one line and exits 2, Ctrl-C exits 130."""
    try:
        return int(fn() or 0)
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"ttsgym {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ttsgym {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
