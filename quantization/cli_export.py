"""`moecast export`: a checkpoint -> a signed edge bundle (model.onnx, manifest.json, .sig).

With `--calibration DATA` the model is first pruned for the site DATA comes from (a CSV or
Parquet file, or a folder of them): `--keep-experts K` per layer, or `auto`, the fewest within
`--tolerance` of the unpruned held-out MASE (`quantization.prune`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moecast.model.checkpoint import checkpoint_metadata, load_checkpoint
from moecast.model.data.corpus import CorpusError, load_site_series
from moecast.quantization.bundle import DEV_PRIVATE_KEY, build_bundle, load_private_key
from moecast.quantization.prune import DEFAULT_TOLERANCE, prune_for_site

from moecast.bundle.format import BundleError, public_key_fingerprint

UNSIGNED = (
    "a bundle must be signed: pass --sign-key PRIVATE_KEY.pem (agents trust its public half), "
    "or --dev-key to sign with the public development key (local testing only)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--out", required=True, type=Path, help="bundle directory to create")
    parser.add_argument(
        "--quantize", choices=["int8"], help="quantize the weights (default: keep fp32)"
    )
    parser.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM) to sign with")
    parser.add_argument(
        "--dev-key",
        action="store_true",
        help="sign with the development key, whose private half is public: never for production",
    )
    parser.add_argument(
        "--model-version",
        type=int,
        default=1,
        help="version agents compare to refuse downgrades; increase it with every release",
    )
    parser.add_argument("--tar", action="store_true", help="also write OUT.tar")
    parser.add_argument(
        "--calibration",
        type=Path,
        help="the site's series (CSV/Parquet file or folder): prune experts for that site first",
    )
    parser.add_argument(
        "--keep-experts",
        type=_keep_experts,
        metavar="K|auto",
        help="with --calibration: experts kept per layer, or auto (the fewest within "
        "--tolerance of the unpruned MASE on held-out windows; default)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"auto: allowed relative MASE increase (default {DEFAULT_TOLERANCE})",
    )


def _keep_experts(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of experts or auto, got {text!r}"
        ) from None


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if args.sign_key and args.dev_key:
        return _fail("pass either --sign-key or --dev-key, not both")
    if not args.sign_key and not args.dev_key:
        return _fail(UNSIGNED)
    if args.model_version < 0:
        return _fail("--model-version must be >= 0")
    if not args.checkpoint.is_dir():
        return _fail(f"no checkpoint at {args.checkpoint}")
    if args.keep_experts is not None and args.calibration is None:
        return _fail("--keep-experts needs --calibration DATA: experts are chosen on a site's data")
    try:
        key = load_private_key(args.sign_key or DEV_PRIVATE_KEY)
        model = load_checkpoint(args.checkpoint)
    except (OSError, ValueError) as err:
        return _fail(str(err))

    training: dict[str, object] = {"checkpoint": checkpoint_metadata(args.checkpoint)}
    if args.calibration:
        try:
            keep = None if args.keep_experts in (None, "auto") else args.keep_experts
            report = prune_for_site(
                model, load_site_series(args.calibration), keep=keep, tolerance=args.tolerance
            )
        except (CorpusError, ValueError) as err:
            return _fail(f"pruning: {err}")
        print(report.table())
        training["pruning"] = {"calibration": str(args.calibration), **report.to_dict()}
    try:
        out = build_bundle(
            model,
            args.out,
            key,
            quantization=args.quantize or "fp32",
            model_version=args.model_version,
            training=training,
            tar=args.tar,
        )
    except (FileExistsError, BundleError) as err:
        return _fail(str(err))

    size = (out / "model.onnx").stat().st_size
    print(
        f"wrote {out}: {model.config.name} v{args.model_version}, {args.quantize or 'fp32'}, "
        f"model.onnx {size / 1e6:.2f} MB, signed by key {public_key_fingerprint(key.public_key())}"
    )
    if args.tar:
        print(f"wrote {out.with_name(out.name + '.tar')}")
    if model.is_pruned:
        print(f"kept experts per layer: {model.kept_experts}")
    if args.dev_key:
        print("warning: signed with the development key; production agents must not trust it")
    return 0
