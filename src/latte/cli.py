"""`latte` command line: one sub-command per module in `latte.commands`.

Each command module defines `register(subparsers) -> argparse.ArgumentParser` and `run(args) -> int`.
Errors the user can fix (LatteError, missing files) become one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

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
}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="latte",
        description="Latte: latent diffusion transformer for video generation.",
    )
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
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    from latte.errors import LatteError

    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except LatteError as exc:
        print(f"latte {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        name = exc.filename if exc.filename is not None else exc
        print(f"latte {args.command}: error: file not found: {name}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"latte {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
