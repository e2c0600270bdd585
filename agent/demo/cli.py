"""`moecast demo`: see moecast work in a minute, on any machine, with nothing but this package.

Exit status: 0 when the demo ran and every stream was forecast; 1 when a stream got no
forecast or the run failed (broker, agent); 2 for bad arguments. Ctrl-C during the live part
ends it early and still writes the report.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from urllib.parse import urlsplit

from moecast.agent.demo.broker import BrokerStartError
from moecast.agent.demo.run import DemoError, DemoOptions, run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        metavar="URL",
        help="an MQTT 5 broker, mqtt://HOST:PORT (default: an embedded one in this process)",
    )
    parser.add_argument(
        "--sensors", metavar="N", type=_positive_int, default=12, help="simulated sensors (12)"
    )
    parser.add_argument(
        "--duration",
        metavar="S",
        type=_positive_float,
        default=60.0,
        help="wall seconds the live site runs (60), after its history is loaded",
    )
    parser.add_argument("--seed", type=int, default=0, help="the simulated site's random seed (0)")
    parser.add_argument(
        "--speed",
        metavar="X",
        type=_positive_float,
        default=900.0,
        help="site seconds per wall second (default 900: a 15-minute grid bin each second)",
    )
    parser.add_argument(
        "--no-tui", action="store_true", help="plain progress lines instead of the dashboard"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=Path("."),
        help="where demo-report.json and demo-report.png go (.)",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    if args.broker is not None and urlsplit(args.broker).scheme != "mqtt":
        print("error: --broker must be mqtt://HOST:PORT", file=sys.stderr)
        return 2
    options = DemoOptions(
        broker_url=args.broker,
        sensors=args.sensors,
        duration_s=args.duration,
        seed=args.seed,
        speed=args.speed,
        tui=not args.no_tui and sys.stdout.isatty(),
        out_dir=args.out,
    )
    try:
        report = run_demo(options)
    except (BrokerStartError, DemoError, ConnectionError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the live part; during it, Ctrl-C ends it early
        print("interrupted", file=sys.stderr)
        return 130
    json_path, png_path, png_problem = report.write(options.out_dir)
    print()
    for line in report.summary_lines():
        print(line)
    print(f"report: {json_path.resolve()}")
    if png_path is not None:
        print(f"        {png_path.resolve()}")
    else:
        print(f"        ({png_problem})")
    missing = [s.name for s in report.streams if not report.forecasts.get(s.name)]
    if missing:
        print(f"error: no forecast for {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value
