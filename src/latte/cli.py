"""`latte` command line: one sub-command per module in `latte.commands`.

Each command module defines `register(subparsers) -> argparse.ArgumentParser` and `run(args) -> int`.
Errors the user can fix (LatteError, which the code raises on purpose, a full disk, and a bad command
line: an unknown argument, an invalid choice, a float that is nan or inf) become one line on stderr and
exit code 2; anything else is a bug and keeps its traceback. A LatteWarning (what the library changed about
an input, e.g. an image resized) is one line `latte COMMAND: warning: ...` on stderr. `--traceback` or LATTE_DEBUG=1 prints the
full trace of the one-line errors too, causes included.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
import traceback
import warnings

from latte import __version__
from latte.errors import LatteError, LatteWarning
from latte.files import disk_full
from latte.host_memory import keep_freed_memory

# name -> module; kept in the order `latte --help` lists them.
COMMANDS = {
    "train": "latte.commands.train",
    "sample": "latte.commands.sample",
    "info": "latte.commands.info",
    "data": "latte.commands.data",
    "encode": "latte.commands.encode",
    "eval": "latte.commands.eval",
    "convert": "latte.commands.convert",
    "ablate": "latte.commands.ablate",
    "demo": "latte.commands.demo",
}


class Parser(argparse.ArgumentParser):
    """argparse, with each command-line error as one line naming where the help is (not the usage block);
    sub-commands' parsers are of this class too (argparse makes them of their parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")

    def parse_known_args(self, args=None, namespace=None):
        """An argument the deepest (sub-)command does not know is its error, named with its help."""
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def check_floats(args: argparse.Namespace) -> None:
    """Every float option of every command is a finite number (argparse's float() takes nan and inf)."""
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise LatteError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = Parser(
        prog="latte",
        description="Latte: latent diffusion transformer for video generation.",
    )
    parser.add_argument("--version", action="version", version=f"latte {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="print the full trace of errors (also LATTE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built yet in this checkout
                continue
            raise
        module.register(sub)
        modules[name] = module
    return parser, modules


def one_line(exc: Exception) -> str:
    """The error's own message; a DataLoader worker re-raises with the worker's traceback in the
    message, whose last line is the original `module.Class: message`."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # colour codes some libraries put in messages
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and --version exit 0 as argparse does; a usage error returns 2
        if exc.code in (0, None):
            raise
        return exc.code
    if args.command is None:
        parser.print_help()
        return 2
    debug = args.traceback or os.environ.get("LATTE_DEBUG", "") not in ("", "0")
    keep_freed_memory()  # CPU tensors reuse freed heap memory instead of faulting in fresh pages
    try:
        check_floats(args)
        with warnings.catch_warnings():
            warnings.simplefilter("always", LatteWarning)  # each one is about an input of this command
            shown = warnings.showwarning

            def show(message, category, *rest, **kwargs):
                if issubclass(category, LatteWarning):
                    print(f"latte {args.command}: warning: {one_line(message)}", file=sys.stderr)
                else:
                    shown(message, category, *rest, **kwargs)

            warnings.showwarning = show
            return int(modules[args.command].run(args) or 0)
    except LatteError as exc:
        if debug:
            traceback.print_exc()
        print(f"latte {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not disk_full(exc):
            raise
        if debug:
            traceback.print_exc()
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(f"latte {args.command}: error: no space left on device{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"latte {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
