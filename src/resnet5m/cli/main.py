"""Entry point: ``resnet5m <command> ...``. Expected failures print one line and exit non-zero."""

from __future__ import annotations

import argparse
import os
import sys
import typing
import warnings
from pathlib import Path

from resnet5m import __version__
from resnet5m.errors import UserError

_python_format_warning = warnings.formatwarning
_PACKAGE = Path(__file__).resolve().parents[1]  # src/resnet5m: where resnet5m's own warnings come from


class OneLineParser(argparse.ArgumentParser):
    """A bad argument is one line (naming the value and what is allowed) and exit status 2, without the
    usage dump; ``--help`` still shows it. Subcommand parsers inherit this class."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="resnet5m", description="Design, train, compare and ship residual networks under 5M "
                                     "parameters for CIFAR-10.")
    parser.add_argument("--version", action="version", version=f"resnet5m {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        module.add_parsers(sub)
    return parser


def _command_modules() -> list:
    """Each subcommand module exposes ``add_parsers(subparsers)``; imported lazily to keep start-up fast."""
    from resnet5m.cli import eval_cmd, models_cmd, recipes_cmd, search_cmd, study_cmd, train_cmd

    return [models_cmd, recipes_cmd, train_cmd, eval_cmd, study_cmd, search_cmd]


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 (warnings' API)
    """resnet5m's own warnings (e.g. an image resized to 32x32) as one line; others as Python shows them."""
    if _PACKAGE in Path(str(filename)).resolve().parents:
        return f"resnet5m: warning: {one_line(str(message))}\n"
    return _python_format_warning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    from resnet5m.runtime.allocator import tune_glibc_malloc

    tune_glibc_malloc()
    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the group
            print(f"resnet5m: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("resnet5m: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `resnet5m presets | head`
        return 0
    except OSError as exc:  # the file system said no (permissions, a full disk, a file where a folder should be)
        print(f"resnet5m: error: {os_error_line(exc)}", file=sys.stderr)
        return 2


def os_error_line(exc: OSError) -> str:
    """An operating-system failure as one line: the path it concerns, then what the system said."""
    where = f"{exc.filename}: " if exc.filename else ""
    return one_line(where + str(exc.strerror or exc))


def one_line(message: str, limit: int = 2000) -> str:
    """Every error is one line, of bounded length, printable (a hostile file's NUL or escape codes are shown as ?)."""
    text = "".join(c if c.isprintable() else "?" for c in " ".join(message.split()))
    return text if len(text) <= limit else text[:limit] + "..."


if __name__ == "__main__":
    sys.exit(main())
