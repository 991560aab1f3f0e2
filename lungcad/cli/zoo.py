"""``lungcad zoo``: list the model zoo, or print one model's summary and parameter count.

::

    lungcad zoo list
    lungcad zoo summary resnet50 --input-shape 224,224,3 --classes 1000
    lungcad zoo summary wrn3d --input-shape 32,32,32,1 --no-top --pooling avg --option depth=10 --option width=2
"""
from __future__ import annotations

import argparse
import ast
import sys


def _input_shape(text: str) -> tuple:
    """Parse ``224,224,3`` (``none`` for a free spatial size) into a tuple."""
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("none", "?"):
            values.append(None)
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers (or 'none'), e.g. 224,224,3; received {text!r}") from None
    return tuple(values)


def _option(text: str) -> tuple[str, object]:
    """Parse ``KEY=VALUE`` into a family keyword; VALUE is a Python literal or a plain string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. depth=10; received {text!r}")
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        parsed = value.strip()
    return key.strip(), parsed


def add_parser(subparsers, parents) -> None:
    """Register ``lungcad zoo`` with its ``list`` and ``summary`` actions."""
    parser = subparsers.add_parser(
        "zoo", parents=parents, help="list the model zoo, or summarize one model",
        description="The classifier zoo (LeNet-5, AlexNet, VGG, GoogLeNet, ResNet, WideResNet, U-Net).")
    actions = parser.add_subparsers(dest="zoo_action", metavar="ACTION", required=True)
    actions.add_parser("list", parents=parents, help="print the registry: name, family, dims, input shape, description")
    summary = actions.add_parser("summary", parents=parents, help="print a model's layers and parameter count")
    summary.add_argument("name", help="registry name, e.g. resnet50 (see 'lungcad zoo list')")
    summary.add_argument("--input-shape", type=_input_shape, default=None, metavar="H,W,C",
                         help="channels_last input shape, e.g. 224,224,3 or 32,32,32,1 (default: the registry's)")
    summary.add_argument("--classes", type=int, default=None, help="number of classes (default: the registry's)")
    summary.add_argument("--no-top", dest="include_top", action="store_false",
                         help="the backbone only (include_top=False)")
    summary.add_argument("--pooling", choices=("avg", "max"), default=None,
                         help="global pooling of the backbone (with --no-top)")
    summary.add_argument("--option", dest="options", type=_option, action="append", default=[], metavar="KEY=VALUE",
                         help="a family keyword, e.g. depth=10 (repeatable)")
    parser.set_defaults(func=run)


def _format_shape(shape: tuple) -> str:
    return ",".join("none" if s is None else str(s) for s in shape)


def _list() -> int:
    from lungcad.models import list_models, model_info

    rows = [("NAME", "FAMILY", "DIMS", "INPUT SHAPE", "DESCRIPTION")]
    for name in list_models():
        info = model_info(name)
        rows.append((name, info["family"], f"{info['dims']}D", _format_shape(info["input_shape"]),
                     info["description"]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    return 0


def _summary(args: argparse.Namespace) -> int:
    from lungcad.models import build_model

    try:
        model = build_model(args.name, input_shape=args.input_shape, classes=args.classes,
                            include_top=args.include_top, pooling=args.pooling, **dict(args.options))
    except ValueError as e:
        print(f"lungcad zoo: error: {e}", file=sys.stderr)
        return 2
    model.summary(line_length=110)
    total = model.count_params()
    trainable = sum(_size(w.shape) for w in model.trainable_weights)
    print(f"{model.name}: {total:,} parameters ({trainable:,} trainable, {total - trainable:,} non-trainable), "
          f"input {_format_shape(model.input_shape[1:])}")
    return 0


def _size(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def run(args: argparse.Namespace) -> int:
    """Run ``lungcad zoo list`` or ``lungcad zoo summary``; returns the exit code."""
    if args.zoo_action == "list":
        return _list()
    return _summary(args)
