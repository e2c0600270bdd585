"""`moecast fleet`: keys, signing, publishing bundles to a group of agents, and their status.

    moecast fleet keygen --out keys/
    moecast fleet sign BUNDLE --key keys/signing-key.pem [--model-version N] [--out DIR]
    moecast fleet publish BUNDLE --group site-7 --broker mqtts://broker:8883 --key K --ca ca.pem
    moecast fleet status --group site-7 --broker mqtts://broker:8883 --ca ca.pem
    moecast fleet prune-for --group site-7 --checkpoint C --broker ... --key K --out DIR

Only `prune-for` needs torch (the 'export' extra). The broker password is read from the
MOECAST_FLEET_PASSWORD environment variable, never from the command line, where any user of
the machine could read it in the process list.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from moecast.bundle.format import MANIFEST_FILE, SIGNATURE_FILE, BundleError, public_key_fingerprint
from moecast.bundle.wire import DEFAULT_CHUNK_BYTES
from moecast.fleet.client import (
    DEFAULT_AGENTS_PREFIX,
    DEFAULT_FLEET_PREFIX,
    DEFAULT_LISTEN_S,
    Connection,
    FleetError,
    collect_expert_load,
    fleet_status,
    load_table,
    publish_bundle,
    status_table,
)
from moecast.quantization.signing import (
    DEV_PRIVATE_KEY,
    generate_keypair,
    load_private_key,
    resign_bundle,
)

PASSWORD_ENV = "MOECAST_FLEET_PASSWORD"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    keygen = sub.add_parser("keygen", help="create an Ed25519 signing key pair")
    keygen.add_argument("--out", type=Path, default=Path("keys"), help="directory (default keys)")

    sign = sub.add_parser("sign", help="sign a bundle (in place, or into --out)")
    sign.add_argument("bundle", type=Path)
    _key_arguments(sign)
    sign.add_argument("--out", type=Path, help="write the signed bundle here instead")
    sign.add_argument("--model-version", type=int, help="set the model version first")
    sign.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="let agents install it over a newer version (signed into the manifest, with the "
        "signing time as its created time: only models made before it can be downgraded)",
    )

    publish = sub.add_parser("publish", help="publish a bundle to a group, retained")
    publish.add_argument("bundle", type=Path)
    _group_arguments(publish)
    _key_arguments(publish)
    publish.add_argument(
        "--chunk-bytes",
        type=int,
        default=DEFAULT_CHUNK_BYTES,
        help=f"largest message; bigger models are chunked (default {DEFAULT_CHUNK_BYTES})",
    )

    status = sub.add_parser("status", help="the group's agents: status and update progress")
    _group_arguments(status)

    prune = sub.add_parser("prune-for", help="prune a checkpoint for a group's expert load")
    _group_arguments(prune)
    _key_arguments(prune)
    prune.add_argument("--checkpoint", type=Path, required=True)
    prune.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    prune.add_argument("--model-version", type=int, required=True)
    prune.add_argument("--keep-experts", type=int, help="experts per layer (default: coverage)")
    prune.add_argument("--coverage", type=float, help="share of the load to keep (default 0.99)")
    prune.add_argument("--quantize", choices=["int8"], help="quantize the weights")


def _key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", type=Path, help="Ed25519 private key (PEM)")
    parser.add_argument(
        "--dev-key", action="store_true", help="the public development key: local testing only"
    )


def _group_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", required=True, help="fleet group (the agents' updates.group)")
    parser.add_argument("--broker", required=True, help="mqtt://host[:port] or mqtts://...")
    parser.add_argument("--ca", type=Path, help="CA certificate of the broker (mqtts)")
    parser.add_argument("--cert", type=Path, help="client certificate (mqtts)")
    parser.add_argument("--cert-key", type=Path, help="client certificate key (mqtts)")
    parser.add_argument("--username", help=f"broker user; the password is ${PASSWORD_ENV}")
    parser.add_argument("--fleet-prefix", default=DEFAULT_FLEET_PREFIX)
    parser.add_argument("--agents-prefix", default=DEFAULT_AGENTS_PREFIX)
    parser.add_argument("--listen", type=float, default=DEFAULT_LISTEN_S, help="seconds")


def run(args: argparse.Namespace) -> int:
    try:
        return int(_ACTIONS[args.action](args))
    except (FleetError, BundleError, FileExistsError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _keygen(args: argparse.Namespace) -> int:
    private, public = generate_keypair(args.out)
    key = load_private_key(private)
    print(f"wrote {private} (mode 0600: keep it offline) and {public}")
    print(f"key fingerprint {public_key_fingerprint(key.public_key())}: add {public.name} to the")
    print("agents' trusted_keys")
    return 0


def _signing_key(args: argparse.Namespace):
    if bool(args.key) == bool(args.dev_key):
        raise ValueError("pass exactly one of --key PRIVATE_KEY.pem or --dev-key")
    if args.dev_key:
        print("warning: the development key is public; production agents must not trust it")
    return load_private_key(args.key or DEV_PRIVATE_KEY)


def _sign(args: argparse.Namespace) -> int:
    key = _signing_key(args)
    changes: dict[str, object] = {}
    if args.model_version is not None:
        changes["model_version"] = args.model_version
    if args.allow_downgrade:
        # Agents take a downgrade only if it was signed after their active model was made: a
        # downgrade signed to back out of version N cannot be replayed later to undo N + 1.
        changes["allow_downgrade"] = True
        changes["created"] = datetime.now(UTC)
    if args.out is not None:
        resign_bundle(args.bundle, args.out, key, **changes)
        print(f"wrote {args.out}, signed by key {public_key_fingerprint(key.public_key())}")
        return 0
    if not args.bundle.is_dir():
        raise ValueError("signing in place needs a bundle directory; pass --out for a .tar")
    staging = Path(tempfile.mkdtemp(prefix=".sign-", dir=args.bundle.parent))
    try:
        resign_bundle(args.bundle, staging / "bundle", key, **changes)
        # The signature last: until it is replaced the old one fails on the new manifest, so
        # a bundle caught half-way is refused rather than accepted unsigned.
        for name in (MANIFEST_FILE, SIGNATURE_FILE):
            os.replace(staging / "bundle" / name, args.bundle / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"signed {args.bundle} with key {public_key_fingerprint(key.public_key())}")
    return 0


def _connection(args: argparse.Namespace) -> Connection:
    return Connection(
        args.broker,
        ca_file=args.ca,
        cert_file=args.cert,
        key_file=args.cert_key,
        username=args.username,
        password=os.environ.get(PASSWORD_ENV),
    )


def _publish(args: argparse.Namespace) -> int:
    key = _signing_key(args)
    done = publish_bundle(
        _connection(args),
        args.bundle,
        args.group,
        key,
        fleet_prefix=args.fleet_prefix,
        chunk_bytes=args.chunk_bytes,
    )
    print(
        f"published {done.manifest.name} v{done.manifest.model_version} to group {args.group}: "
        f"{done.model_bytes} B in {max(1, done.chunks)} message(s)"
        + (f", cleared {done.cleared} stale chunk(s)" if done.cleared else "")
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    rows = fleet_status(
        _connection(args), args.group, agents_prefix=args.agents_prefix, listen_s=args.listen
    )
    if not rows:
        print(f"no agent of group {args.group} has reported")
        return 1
    print(status_table(rows))
    print()
    print(load_table(rows))
    return 0


def _prune_for(args: argparse.Namespace) -> int:
    key = _signing_key(args)
    try:
        from moecast.model.checkpoint import load_checkpoint
        from moecast.quantization.bundle import build_bundle
        from moecast.quantization.prune import DEFAULT_COVERAGE, prune_by_load
    except ModuleNotFoundError as err:
        raise ValueError(
            f"`moecast fleet prune-for` needs {err.name}: pip install 'moecast[export]'"
        ) from None
    model = load_checkpoint(args.checkpoint)
    config = model.config
    site = collect_expert_load(
        _connection(args),
        args.group,
        config.n_layers,
        config.n_experts,
        agents_prefix=args.agents_prefix,
        listen_s=args.listen,
    )
    if not site.agents:
        print(f"error: no agent of group {args.group} reported an expert load", file=sys.stderr)
        return 1
    print(f"expert load of {len(site.agents)} agent(s), {site.runs} model runs")
    pruning = prune_by_load(
        model, site.load, keep=args.keep_experts, coverage=args.coverage or DEFAULT_COVERAGE
    )
    print(pruning.table())
    out = build_bundle(
        model,
        args.out,
        key,
        quantization=args.quantize or "fp32",
        model_version=args.model_version,
        training={
            "pruning": {
                "group": args.group,
                "agents": site.agents,
                "runs": site.runs,
                "load": site.load.tolist(),
                "kept_experts": pruning.kept_experts,
                "coverage": pruning.coverage,
            }
        },
    )
    print(f"wrote {out}: publish it with `moecast fleet publish {out} --group {args.group} ...`")
    return 0


_ACTIONS = {
    "keygen": _keygen,
    "sign": _sign,
    "publish": _publish,
    "status": _status,
    "prune-for": _prune_for,
}
