"""``slimtorch`` entry point: dispatches to one module per sub-command.

A sub-command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
adding a command is one file plus one entry in :data:`COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from slimtorch.core.errors import SlimtorchError

#: Sub-command modules under ``slimtorch.cli``, in the order ``--help`` lists them.
COMMAND_MODULES: list[str] = [
    "train", "eval", "profile", "demo", "distill", "share", "prune", "run", "report", "quantize", "search",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command."""
    from slimtorch import __version__

    parser = argparse.ArgumentParser(
        prog="slimtorch",
        description="Make trained PyTorch models smaller and faster: distill, prune, quantize, share.",
    )
    parser.add_argument("--version", action="version", version=f"slimtorch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in COMMAND_MODULES:
        mod = importlib.import_module(f"slimtorch.cli.{mod_name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for user errors, with the message on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (SlimtorchError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"slimtorch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a raw OS error a writer did not name (those raise StorageError, caught above)
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"slimtorch {args.command}: error:{where}: {e.strerror or e} (check the path, the disk space and "
              "the permissions)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slimtorch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
