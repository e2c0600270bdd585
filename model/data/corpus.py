"""Real series from CSV / Parquet files, and the fixed split between pretraining and benchmarks.

The split (paths relative to the data root, `shared/data`; see its README.md):

- `PRETRAIN_SOURCES`: NAB `realAWSCloudwatch` (server metrics, 5 min) and `realAdExchange`
  (ad prices, ~1 h), `uci_beijing_pm25` (air pollution and weather, 1 h) and
  `autoformer_extra` (`exchange_rate.csv`, 8 daily exchange rates; `national_illness.csv`,
  weekly ILI counts).
- `HELD_OUT_SOURCES`, never trained on: the long-horizon benchmark (`ett`, `weather`), the
  sensor benchmark (NAB `realKnownCause` and `realTraffic`, `uci_occupancy`,
  `uci_air_quality`) and the continuous weather sensors it added (`pvlib`: two TMY3 weather
  stations and an hourly air-quality record). `load_pretraining_corpus` refuses any source
  that overlaps them.
- `SENSOR_BENCHMARK_SERIES`: what the broadened sensor benchmark
  (`benchmarks/zero_shot_sensor.py`) scores: every series of the sensor benchmark sources plus
  chosen continuous physical sensors (weather, irradiance, grid load, air quality) from
  `pvlib`, `weather` and one ETT file per transformer station; all inside `HELD_OUT_SOURCES`.
- Unused: `lstnet/exchange_rate.txt.gz` holds the same 8 series as
  `autoformer_extra/exchange_rate.csv` (without dates); loading both would count them twice.

Reading a file: the timestamp comes from year/month/day[/hour/minute/second] columns, a
datetime-typed column, a date column plus a time column (day-first dates such as 10/03/2004 are
recognised), a column named timestamp/datetime/date/time (numeric ones are Unix seconds, or
milliseconds), or else the first text column that parses as dates. TMY3 files (a site line
before the header, `Date (MM/DD/YYYY)` and hour-ending `Time (HH:MM)` 01:00-24:00, each month
from a different real year) are read as one typical year: the rows keep their order on a
common non-leap year, each hour labelled by its start, their `... source` and `... uncert` quality
flag columns are dropped and -9900 is missing. A file whose header row is
numbers has no header and no timestamps (LSTNet). Every other numeric column becomes one
`Series`. Skipped, and logged: text columns, a first column holding row numbers (1, 2, 3, ...),
constant columns and columns with under 10 % of their grid observed. Sentinels (-9999, -200)
and non-finite values become NaN. The interval is the median positive step between timestamps;
readings are binned onto that grid (nearest grid point, mean of the readings in a bin, NaN for
empty bins), which also averages duplicate timestamps and puts out-of-order rows in place.
"""

from __future__ import annotations

import gzip
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

PRETRAIN_SOURCES: tuple[str, ...] = (
    "nab/data/realAWSCloudwatch",
    "nab/data/realAdExchange",
    "uci_beijing_pm25",
    "autoformer_extra",
)
LONG_HORIZON_SOURCES: tuple[str, ...] = ("ett", "weather")
SENSOR_BENCHMARK_SOURCES: tuple[str, ...] = (
    "nab/data/realKnownCause",
    "nab/data/realTraffic",
    "uci_occupancy",
    "uci_air_quality",
)
WEATHER_SENSOR_SOURCES: tuple[str, ...] = ("pvlib",)
HELD_OUT_SOURCES: tuple[str, ...] = (
    LONG_HORIZON_SOURCES + SENSOR_BENCHMARK_SOURCES + WEATHER_SENSOR_SOURCES
)

_TMY3_SERIES = (
    "GHI (W/m^2)",
    "DNI (W/m^2)",
    "DHI (W/m^2)",
    "Dry-bulb (C)",
    "Dew-point (C)",
    "RHum (%)",
    "Wspd (m/s)",
)
_ETT_SERIES = ("HUFL", "MUFL", "LUFL", "OT")
# (file or folder under the data root, columns; empty = every usable column). Only measured
# quantities: computed ones (TMY3's extraterrestrial ETR) and near-copies of a chosen column
# (Jena's Tpot/Tlog of T, PAR of SWDR; ETTh2 and ETTm1 are the other resolution of the two
# stations) are left out so that no sensor counts twice.
SENSOR_BENCHMARK_SERIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    *((source, ()) for source in SENSOR_BENCHMARK_SOURCES),
    ("pvlib/723170TYA.CSV.gz", (*_TMY3_SERIES, "Pressure (mbar)")),
    ("pvlib/703165TY.csv.gz", _TMY3_SERIES),  # its pressure is one constant: not a sensor
    ("pvlib/soiling_hsu_example_inputs.csv.gz", ("rain", "PM2_5", "PM10")),
    (
        "weather/weather.csv.gz",
        (
            "p (mbar)",
            "T (degC)",
            "Tdew (degC)",
            "rh (%)",
            "wv (m/s)",
            "rain (mm)",
            "SWDR (W/m\ufffd)",  # the file's own replacement character
            "OT",
        ),
    ),
    ("ett/ETTh1.csv", _ETT_SERIES),
    ("ett/ETTm2.csv.gz", _ETT_SERIES),
)

DATA_ENV_VAR = "MOECAST_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]
SENTINELS: tuple[float, ...] = (-9999.0, -200.0)
DATA_SUFFIXES: tuple[str, ...] = (".csv.gz", ".txt.gz", ".csv", ".txt", ".parquet")
DOCUMENTATION_PREFIXES: tuple[str, ...] = ("license", "readme", "notice")
TIMESTAMP_NAMES: tuple[str, ...] = ("timestamp", "datetime", "date", "time")
CALENDAR_PARTS: tuple[str, ...] = ("year", "month", "day", "hour", "minute", "second")
TMY3_MISSING = -9900.0
TMY3_FLAG_SUFFIXES: tuple[str, ...] = ("source", "uncert (%)", "uncert (code)")
TMY3_YEAR = 2001  # any non-leap year: a typical meteorological year has 8760 hours
MIN_OBSERVED_FRACTION = 0.1
MIN_PARSED_FRACTION = 0.9  # share of rows a timestamp column must parse
MAX_BINS_PER_ROW = 100  # a grid this much longer than the file means broken timestamps
UNIX_MS_THRESHOLD = 1e11  # numeric timestamps above this are milliseconds (year > 5138 in s)


@dataclass(frozen=True, eq=False)
class Series:
    """One univariate series on a regular grid; NaN = missing."""

    name: str  # "<file stem>/<column>"
    values: np.ndarray  # float32, 1-D
    interval_s: float | None  # None when the file has no timestamps
    source: str  # the file, relative to the corpus root when loaded by load_corpus


class CorpusError(ValueError):
    """A data file or source that cannot be used; the message names it and says why."""


class HeldOutSourceError(ValueError):
    """A benchmark (held-out) source was requested for pretraining."""


class _Unusable(Exception):
    """Raised inside one file's loading; load_series_file adds the file name."""


def default_data_root() -> Path:
    """`$MOECAST_DATA`, else `../shared/data` next to the repository root."""
    override = os.environ.get(DATA_ENV_VAR)
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


def load_series_file(path: Path | str, *, source: str | None = None) -> list[Series]:
    """All usable series in one CSV (.csv, .csv.gz, .txt, .txt.gz) or Parquet file."""
    path = Path(path)
    try:
        return _load_file(path, source if source is not None else str(path))
    except _Unusable as err:
        raise CorpusError(f"{path}: {err}") from err


def load_corpus(root: Path | str, include: Sequence[str]) -> list[Series]:
    """Every data file under each `include` entry (a folder, searched recursively, or a file)."""
    root = Path(root)
    series: list[Series] = []
    for entry in include:
        for path in _data_files(root / entry):
            series.extend(load_series_file(path, source=path.relative_to(root).as_posix()))
    return series


def load_site_series(path: str | Path) -> list[Series]:
    """Every usable series in a CSV/Parquet file, or in the data files under a folder."""
    path = Path(path)
    if path.is_file():
        series = load_series_file(path)
    elif path.is_dir():
        series = load_corpus(path, ["."])
    else:
        raise CorpusError(f"{path}: no such file or directory")
    if not series:
        raise CorpusError(f"{path}: no usable series (see the log for skipped columns)")
    return series


def load_pretraining_corpus(
    data_root: Path | str | None = None, include: Sequence[str] = PRETRAIN_SOURCES
) -> list[Series]:
    """The pretraining series; raises HeldOutSourceError if `include` touches a benchmark."""
    root = default_data_root() if data_root is None else Path(data_root)
    _refuse_held_out(root, include)
    return load_corpus(root, include)


def load_selection(
    root: Path | str, selection: Sequence[tuple[str, Sequence[str]]]
) -> list[Series]:
    """The series of `selection` ((source, columns) pairs, no columns = all), in its order;
    raises CorpusError naming a column that is not there."""
    series: list[Series] = []
    for source, columns in selection:
        loaded = load_corpus(root, [source])
        if not columns:
            series.extend(loaded)
            continue
        by_column = {s.name.split("/", 1)[1]: s for s in loaded}
        missing = [c for c in columns if c not in by_column]
        if missing:
            raise CorpusError(f"{source}: no usable column {missing} (has {sorted(by_column)})")
        series.extend(by_column[c] for c in columns)
    return series


def _refuse_held_out(root: Path, include: Sequence[str]) -> None:
    # Compare resolved paths so "nab", "./ett/ETTh1.csv" or "x/../weather" are caught too.
    for entry in include:
        wanted = (root / entry).resolve()
        for held_out in HELD_OUT_SOURCES:
            benchmark = (root / held_out).resolve()
            if wanted == benchmark or benchmark in wanted.parents or wanted in benchmark.parents:
                raise HeldOutSourceError(
                    f"{entry!r} overlaps the held-out benchmark source {held_out!r}: "
                    "benchmark data is never trained on"
                )


def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CorpusError(f"{path}: no such file or directory")
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and _data_suffix(p) and not p.name.lower().startswith(DOCUMENTATION_PREFIXES)
    )


def _data_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in DATA_SUFFIXES if name.endswith(s)), None)


def _load_file(path: Path, source: str) -> list[Series]:
    frame = _read_table(path)
    leading_column = frame.columns[0] if frame.shape[1] else None
    seconds, frame = _split_timestamps(frame, path)
    columns = _numeric_columns(frame, path, leading_column)
    if not columns:
        raise _Unusable("no numeric columns")
    interval_s, bins, n_bins = (None, None, 0) if seconds is None else _grid(seconds)
    stem = path.name[: -len(_data_suffix(path) or "")]
    series: list[Series] = []
    for column, values in columns.items():
        gridded = values if bins is None else _bin_mean(values, bins, n_bins)
        reason = _skip_reason(gridded)
        if reason:
            logger.info("%s: skipping column %r (%s)", path, column, reason)
            continue
        series.append(Series(f"{stem}/{column}", gridded.astype(np.float32), interval_s, source))
    if not series:
        logger.warning("%s: no usable series (every numeric column was skipped)", path)
    return series


def _read_table(path: Path) -> pd.DataFrame:
    suffix = _data_suffix(path)
    if suffix is None:
        raise _Unusable(f"unknown extension (expected one of {', '.join(DATA_SUFFIXES)})")
    try:
        if suffix != ".parquet" and _is_tmy3(path):
            return _read_tmy3(path)
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
            return frame.reset_index() if isinstance(frame.index, pd.DatetimeIndex) else frame
        frame = pd.read_csv(path, encoding_errors="replace")
        if all(_is_number(name) for name in frame.columns):
            frame = pd.read_csv(path, header=None, encoding_errors="replace")
            frame.columns = [str(i) for i in range(frame.shape[1])]
        return frame
    except ImportError as err:
        raise _Unusable(f"reading Parquet needs pyarrow or fastparquet ({err})") from err
    except (OSError, ValueError) as err:  # pandas' parser and decoding errors are ValueErrors
        raise _Unusable(f"unreadable ({type(err).__name__}: {err})") from err


def _is_tmy3(path: Path) -> bool:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        handle.readline()  # the site line
        return handle.readline().startswith("Date (MM/DD/YYYY),Time (HH:MM)")


def _read_tmy3(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, skiprows=1, encoding_errors="replace", low_memory=False)
    date, time = frame.columns[:2]
    day = pd.to_datetime(frame[date], format="%m/%d/%Y", errors="coerce")
    hour_ending = pd.to_numeric(frame[time].astype(str).str.split(":").str[0], errors="coerce")
    # Months come from different real years: on their own years the rows would be out of
    # order and years apart, so the typical year is laid on one common year.
    calendar = pd.DataFrame({"year": TMY3_YEAR, "month": day.dt.month, "day": day.dt.day})
    stamps = pd.to_datetime(calendar, errors="coerce", utc=True) + pd.to_timedelta(
        hour_ending - 1, unit="h"
    )
    flags = [c for c in frame.columns if str(c).endswith(TMY3_FLAG_SUFFIXES)]
    values = frame.drop(columns=[date, time, *flags]).apply(pd.to_numeric, errors="coerce")
    return pd.concat([stamps.rename("timestamp"), values.mask(values == TMY3_MISSING)], axis=1)


def _is_number(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def _split_timestamps(frame: pd.DataFrame, path: Path) -> tuple[np.ndarray | None, pd.DataFrame]:
    """(Unix seconds per row, or None; the frame without timestamp columns and unparsed rows)."""
    found = _find_timestamps(frame)
    if found is None:
        return None, frame
    stamps, consumed = found
    parsed = stamps.notna().to_numpy()
    if not parsed.all():
        logger.info("%s: dropping %d rows with unparseable timestamps", path, int((~parsed).sum()))
    seconds = (stamps[parsed] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    return seconds, frame.loc[parsed].drop(columns=consumed)


def _find_timestamps(frame: pd.DataFrame) -> tuple[pd.Series, list[str]] | None:
    by_name = {str(c).strip().lower(): c for c in frame.columns}
    if {"year", "month", "day"} <= by_name.keys():
        parts = [p for p in CALENDAR_PARTS if p in by_name]
        calendar = frame[[by_name[p] for p in parts]].set_axis(parts, axis=1)
        return pd.to_datetime(calendar, errors="coerce", utc=True), [by_name[p] for p in parts]
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            return pd.to_datetime(frame[column], utc=True), [column]
    if "date" in by_name and "time" in by_name:
        date, time = by_name["date"], by_name["time"]
        stamps = _parse_text_datetimes(frame[date].astype(str) + " " + frame[time].astype(str))
        if stamps is not None:
            return stamps, [date, time]
    for name in TIMESTAMP_NAMES:
        if name in by_name and (stamps := _parse_named(frame[by_name[name]])) is not None:
            return stamps, [by_name[name]]
    for column in frame.columns:
        if _is_text(frame[column]) and (stamps := _parse_text_datetimes(frame[column])) is not None:
            return stamps, [column]
    return None


def _parse_named(column: pd.Series) -> pd.Series | None:
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        unit = "ms" if column.abs().median() > UNIX_MS_THRESHOLD else "s"
        return pd.to_datetime(column, unit=unit, errors="coerce", utc=True)
    return _parse_text_datetimes(column) if _is_text(column) else None


def _is_text(column: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(column) or pd.api.types.is_object_dtype(column)


def _parse_text_datetimes(column: pd.Series) -> pd.Series | None:
    """Parsed datetimes if enough rows parse; of month-first and day-first, the better fit."""
    if pd.to_numeric(column, errors="coerce").notna().mean() > 0.5:
        return None  # numbers in text form are values, not dates
    best, best_score = None, (0.0, 0.0)
    for dayfirst in (False, True):
        with warnings.catch_warnings():
            # pandas warns when it cannot infer one format; the parsed share decides here.
            warnings.simplefilter("ignore", UserWarning)
            stamps = pd.to_datetime(column, errors="coerce", dayfirst=dayfirst, utc=True)
        parsed_share = float(stamps.notna().mean())
        increasing_share = float((stamps.dropna().diff().dropna() >= pd.Timedelta(0)).mean())
        score = (parsed_share, 0.0 if np.isnan(increasing_share) else increasing_share)
        if score > best_score:
            best, best_score = stamps, score
        if best_score == (1.0, 1.0):
            break  # every row parsed, in order: the other reading cannot do better
    return best if best_score[0] >= MIN_PARSED_FRACTION else None


def _numeric_columns(
    frame: pd.DataFrame, path: Path, leading_column: object
) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for column in frame.columns:
        raw = frame[column]
        if pd.api.types.is_datetime64_any_dtype(raw):
            continue
        numbers = pd.to_numeric(raw, errors="coerce")
        if numbers.notna().sum() < 0.5 * raw.notna().sum():
            logger.info("%s: skipping non-numeric column %r", path, column)
            continue
        values = numbers.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        # Only the file's first column: elsewhere 1, 2, 3, ... may well be a measured count.
        if column == leading_column and _is_row_counter(values):
            logger.info("%s: skipping row-number column %r", path, column)
            continue
        values[~np.isfinite(values) | np.isin(values, SENTINELS)] = np.nan
        columns[str(column)] = values
    return columns


def _is_row_counter(values: np.ndarray) -> bool:
    return values.size > 2 and bool(np.all(np.diff(values) == 1.0))


def _grid(seconds: np.ndarray) -> tuple[float, np.ndarray, int]:
    """(interval, grid index of each row, grid length) for timestamps in seconds."""
    distinct = np.unique(seconds)
    if distinct.size < 2:
        raise _Unusable("fewer than two distinct timestamps")
    interval_s = float(np.median(np.diff(distinct)))
    bins = np.rint((seconds - distinct[0]) / interval_s).astype(np.int64)
    n_bins = int(bins.max()) + 1
    if n_bins > MAX_BINS_PER_ROW * seconds.size:
        raise _Unusable(
            f"timestamps span {n_bins} steps of {interval_s:g} s for {seconds.size} rows"
        )
    return interval_s, bins, n_bins


def _bin_mean(values: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    observed = np.isfinite(values)
    sums = np.bincount(bins[observed], weights=values[observed], minlength=n_bins)
    counts = np.bincount(bins[observed], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts  # 0 / 0 = NaN marks an empty bin


def _skip_reason(values: np.ndarray) -> str | None:
    observed = np.isfinite(values)
    if observed.mean() < MIN_OBSERVED_FRACTION:
        return f"only {observed.mean():.1%} of the grid observed"
    if np.nanmin(values) == np.nanmax(values):
        return "constant"
    return None
