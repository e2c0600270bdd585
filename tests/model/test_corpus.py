"""The real-series corpus loader: file formats, gridding, bad files and the held-out split."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from moecast.model.data import (
    HELD_OUT_SOURCES,
    PRETRAIN_SOURCES,
    SENSOR_BENCHMARK_SERIES,
    WEATHER_SENSOR_SOURCES,
    CorpusError,
    HeldOutSourceError,
    Series,
    default_data_root,
    load_corpus,
    load_pretraining_corpus,
    load_selection,
    load_series_file,
)
from moecast.model.data.corpus import REPO_ROOT


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _only(series: list[Series]) -> Series:
    assert len(series) == 1, [s.name for s in series]
    return series[0]


def _by_column(series: list[Series]) -> dict[str, Series]:
    return {s.name.split("/", 1)[1]: s for s in series}


# --- one file -------------------------------------------------------------------------------


def test_sentinels_and_non_finite_values_become_nan(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.csv",
        "timestamp,value\n"
        "2024-01-01 00:00,1.5\n"
        "2024-01-01 01:00,-9999\n"
        "2024-01-01 02:00,-200\n"
        "2024-01-01 03:00,inf\n"
        "2024-01-01 04:00,\n"
        "2024-01-01 05:00,-199.5\n",
    )
    series = _only(load_series_file(path))
    np.testing.assert_array_equal(
        series.values, np.array([1.5, np.nan, np.nan, np.nan, np.nan, -199.5], dtype=np.float32)
    )
    assert series.values.dtype == np.float32
    assert series.interval_s == 3600.0
    assert series.name == "s/value"
    assert series.source == str(path)


def test_irregular_timestamps_are_binned_onto_the_median_step(tmp_path: Path) -> None:
    # Steps 60, 59, 61, 61, 59, 60, 120 s: median 60; the 120 s step leaves one bin empty.
    seconds = [0, 60, 119, 180, 241, 300, 360, 480]
    rows = [
        f"{pd.Timestamp('2015-02-02 14:19:00') + pd.Timedelta(seconds=s)},{10 * (i + 1)}"
        for i, s in enumerate(seconds)
    ]
    path = _write(tmp_path / "irregular.csv", "date,CO2\n" + "\n".join(rows) + "\n")
    series = _only(load_series_file(path))
    assert series.interval_s == 60.0
    np.testing.assert_array_equal(
        series.values, np.array([10, 20, 30, 40, 50, 60, 70, np.nan, 80], dtype=np.float32)
    )


def test_duplicate_and_out_of_order_timestamps(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "dup.csv",
        "time,level\n"
        "2020-05-12 06:00:00,1\n"
        "2020-05-12 06:10:00,2\n"
        "2020-05-12 06:10:00,4\n"
        "2020-05-12 06:30:00,5\n"
        "2020-05-12 06:20:00,3\n",
    )
    series = _only(load_series_file(path))
    assert series.interval_s == 600.0
    np.testing.assert_array_equal(series.values, np.array([1, 3, 3, 5], dtype=np.float32))


def test_a_duplicate_with_one_missing_reading_keeps_the_other(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "d.csv",
        "timestamp,v\n2020-01-01 00:00,1\n2020-01-01 00:05,-9999\n2020-01-01 00:05,7\n"
        "2020-01-01 00:10,2\n",
    )
    np.testing.assert_array_equal(_only(load_series_file(path)).values, [1, 7, 2])


def test_columns_that_are_not_series_are_skipped(tmp_path: Path) -> None:
    n = 50
    frame = pd.DataFrame(
        {
            "No": np.arange(1, n + 1),
            "datetime": pd.date_range("2021-03-01", periods=n, freq="15min").astype(str),
            "temp": np.linspace(18.0, 22.0, n),
            "wind_dir": ["NW", "SE"] * (n // 2),
            "constant": 5.0,
            "mostly_missing": [1.0, 2.0] + [np.nan] * (n - 2),
            "humidity": np.sin(np.arange(n)),
            "visitors": np.arange(1, n + 1),  # counts up like a row number, but not first
        }
    )
    path = tmp_path / "mixed.csv"
    frame.to_csv(path, index=False)
    series = _by_column(load_series_file(path))
    assert sorted(series) == ["humidity", "temp", "visitors"]
    assert series["temp"].interval_s == 900.0
    np.testing.assert_allclose(series["temp"].values, np.linspace(18.0, 22.0, n), rtol=1e-6)


def test_gzip_csv_and_numeric_unix_timestamps(tmp_path: Path) -> None:
    rows = "".join(f"{1_700_000_000 + 300 * i},{i % 7}\n" for i in range(20))
    path = _write(tmp_path / "epoch.csv.gz", "timestamp,load\n" + rows)
    series = _only(load_series_file(path))
    assert series.interval_s == 300.0
    assert series.name == "epoch/load"
    np.testing.assert_array_equal(series.values, np.arange(20) % 7)


def test_headerless_file_has_no_timestamps(tmp_path: Path) -> None:
    # Like lstnet/exchange_rate.txt.gz: comma-separated floats, no header, no dates.
    path = _write(tmp_path / "rates.txt.gz", "0.78,1.61,0.86\n0.79,1.60,0.87\n0.80,1.62,0.85\n")
    series = load_series_file(path)
    assert [s.name for s in series] == ["rates/0", "rates/1", "rates/2"]
    assert all(s.interval_s is None for s in series)
    np.testing.assert_allclose(series[0].values, [0.78, 0.79, 0.80], rtol=1e-6)


def test_row_number_first_field(tmp_path: Path) -> None:
    # Like uci_occupancy/*.txt: a quoted row number before each row, not in the header.
    path = _write(
        tmp_path / "occ.txt",
        '"date","Temperature","Light"\n'
        '"140","2015-02-02 14:19:00",23.7,585.2\n'
        '"141","2015-02-02 14:19:59",23.718,578.4\n'
        '"142","2015-02-02 14:21:00",23.73,572.666\n'
        '"143","2015-02-02 14:22:00",23.7225,493.75\n',
    )
    series = _by_column(load_series_file(path))
    assert sorted(series) == ["Light", "Temperature"]
    assert series["Temperature"].interval_s == 60.0
    np.testing.assert_allclose(series["Light"].values, [585.2, 578.4, 572.666, 493.75], rtol=1e-6)


def test_calendar_part_columns(tmp_path: Path) -> None:
    # Like uci_beijing_pm25: No, year, month, day, hour, values, a categorical column.
    path = _write(
        tmp_path / "prsa.csv",
        "No,year,month,day,hour,pm2.5,cbwd,PRES\n"
        "1,2010,1,1,22,,NW,1021\n"
        "2,2010,1,1,23,129,NW,1020\n"
        "3,2010,1,2,0,148,cv,1020\n"
        "4,2010,1,2,2,159,cv,1019\n",
    )
    series = _by_column(load_series_file(path))
    assert sorted(series) == ["PRES", "pm2.5"]
    assert series["pm2.5"].interval_s == 3600.0
    np.testing.assert_array_equal(series["pm2.5"].values, [np.nan, 129, 148, np.nan, 159])


def test_day_first_date_and_separate_time(tmp_path: Path) -> None:
    # Like uci_air_quality: dd/mm/YYYY dates, a Time column, -200 for missing.
    path = _write(
        tmp_path / "aq.csv",
        "Date,Time,CO_GT,T\n"
        "12/03/2004,22:00:00,2.6,13.6\n"
        "12/03/2004,23:00:00,-200,13.3\n"
        "13/03/2004,00:00:00,2.2,11.9\n"
        "13/03/2004,01:00:00,2.2,-200\n",
    )
    series = _by_column(load_series_file(path))
    assert series["T"].interval_s == 3600.0  # read month-first, 13/03 would not parse
    np.testing.assert_allclose(series["CO_GT"].values, [2.6, np.nan, 2.2, 2.2], rtol=1e-6)
    np.testing.assert_allclose(series["T"].values, [13.6, 13.3, 11.9, np.nan], rtol=1e-6)


def test_first_text_column_that_parses_as_dates_is_the_timestamp(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "when.csv",
        "recorded,flow\n2022-06-01T00:00Z,1.5\n2022-06-01T00:30Z,5\n2022-06-01T01:00Z,2\n",
    )
    assert _only(load_series_file(path)).interval_s == 1800.0


def _tmy3(rows: list[str]) -> str:
    return (
        '723170,"GREENSBORO PIEDMONT TRIAD INT",NC,-5.0,36.100,-79.950,273\n'
        "Date (MM/DD/YYYY),Time (HH:MM),GHI (W/m^2),GHI source,GHI uncert (%),"
        "Dry-bulb (C),Dry-bulb source,Dry-bulb uncert (code),Pressure (mbar)\n" + "".join(rows)
    )


def test_tmy3_is_one_typical_year_in_file_order(tmp_path: Path) -> None:
    # January from 1988, February from 1996: on their own years the rows would be 8 years
    # apart. Hours are hour-ending 01:00-24:00; -9900 is missing; flag columns are no series.
    rows = [
        "01/31/1988,22:00,0,1,0,5.0,A,7,1000\n",
        "01/31/1988,23:00,0,1,0,4.5,A,7,1000\n",
        "01/31/1988,24:00,0,1,0,-9900,?,0,1000\n",
        "02/01/1996,01:00,0,1,0,3.5,A,7,1001\n",
        "02/01/1996,02:00,12,1,9,3.0,A,7,1001\n",
    ]
    series = _by_column(load_series_file(_write(tmp_path / "site.csv.gz", _tmy3(rows))))
    assert sorted(series) == ["Dry-bulb (C)", "GHI (W/m^2)", "Pressure (mbar)"]
    temperature = series["Dry-bulb (C)"]
    assert temperature.interval_s == 3600.0
    np.testing.assert_array_equal(temperature.values, [5.0, 4.5, np.nan, 3.5, 3.0])
    np.testing.assert_array_equal(series["GHI (W/m^2)"].values, [0, 0, 0, 0, 12])


def test_load_selection_keeps_the_chosen_columns_in_order(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2024-01-01", periods=30, freq="h").astype(str),
            "a": np.arange(30.0),
            "b": np.arange(30.0) ** 2,
            "c": np.sin(np.arange(30.0)),
        }
    )
    frame.to_csv(tmp_path / "f.csv", index=False)
    _small_csv(tmp_path / "g" / "one.csv")
    series = load_selection(tmp_path, [("f.csv", ("c", "a")), ("g", ())])
    assert [s.name for s in series] == ["f/c", "f/a", "one/value"]
    with pytest.raises(CorpusError, match=r"f\.csv.*'zz'"):
        load_selection(tmp_path, [("f.csv", ("a", "zz"))])


# --- bad files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("table.xlsx", b"PK\x03\x04", "unknown extension"),
        ("labels.csv", b"date,label\n2020-01-01,a\n2020-01-02,b\n", "no numeric columns"),
        ("broken.csv.gz", b"this is not gzip data", "unreadable"),
        ("empty.csv", b"", "unreadable"),
        ("garbage.parquet", b"not a parquet file", "Parquet|unreadable"),
        ("one_time.csv", b"timestamp,v\n2020-01-01,1\n2020-01-01,2\n", "two distinct"),
    ],
)
def test_bad_file_raises_corpus_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=reason) as raised:
        load_series_file(path)
    assert str(path) in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_parquet_with_a_datetime_index(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="writing Parquet needs pyarrow")
    frame = pd.DataFrame(
        {"kw": np.arange(10.0) ** 2}, index=pd.date_range("2023-01-01", periods=10, freq="10min")
    )
    frame.to_parquet(tmp_path / "p.parquet")
    series = _only(load_series_file(tmp_path / "p.parquet"))
    assert series.interval_s == 600.0
    np.testing.assert_array_equal(series.values, np.arange(10.0) ** 2)


# --- directories and the split --------------------------------------------------------------


def _small_csv(path: Path, offset: float = 0.0) -> Path:
    rows = "".join(f"2024-01-01 {h:02d}:00,{offset + h * h}\n" for h in range(12))
    return _write(path, "timestamp,value\n" + rows)


def test_load_corpus_walks_folders_and_skips_documentation(tmp_path: Path) -> None:
    _small_csv(tmp_path / "a" / "one.csv")
    _small_csv(tmp_path / "a" / "deeper" / "two.txt.gz", offset=1.0)
    _write(tmp_path / "a" / "LICENSE.txt", "MIT License\nPermission is hereby granted\n")
    _write(tmp_path / "a" / "README.md", "# notes\n")
    _write(tmp_path / "a" / "labels.json", "{}")
    _small_csv(tmp_path / "b.csv", offset=2.0)
    series = load_corpus(tmp_path, ["a", "b.csv"])
    assert [s.source for s in series] == ["a/deeper/two.txt.gz", "a/one.csv", "b.csv"]
    assert [s.name for s in series] == ["two/value", "one/value", "b/value"]


def test_load_corpus_missing_source(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="nowhere"):
        load_corpus(tmp_path, ["nowhere"])


def test_load_corpus_propagates_a_bad_file(tmp_path: Path) -> None:
    _small_csv(tmp_path / "src" / "good.csv")
    _write(tmp_path / "src" / "bad.csv", "name,colour\nx,red\ny,blue\n")
    with pytest.raises(CorpusError, match=r"bad\.csv"):
        load_corpus(tmp_path, ["src"])


@pytest.mark.parametrize(
    "entry",
    [
        "ett",
        "weather/",
        "nab",
        "nab/data/realTraffic",
        "ett/ETTh1.csv",
        "x/../weather",
        ".",
        "pvlib",
        "pvlib/723170TYA.CSV.gz",
        "./pvlib/../pvlib/soiling_hsu_example_inputs.csv.gz",
    ],
)
def test_pretraining_refuses_held_out_sources(tmp_path: Path, entry: str) -> None:
    with pytest.raises(HeldOutSourceError, match="held-out"):
        load_pretraining_corpus(tmp_path, include=[*PRETRAIN_SOURCES, entry])


def test_pretraining_loads_its_sources(tmp_path: Path) -> None:
    for i, source in enumerate(PRETRAIN_SOURCES):
        _small_csv(tmp_path / source / f"file{i}.csv", offset=float(i))
    _small_csv(tmp_path / "ett" / "ETTh1.csv")  # present on disk, never loaded
    series = load_pretraining_corpus(tmp_path)
    assert len(series) == len(PRETRAIN_SOURCES)
    assert not any(s.source.startswith("ett") for s in series)


def test_split_is_disjoint() -> None:
    for pretrain in PRETRAIN_SOURCES:
        for held_out in HELD_OUT_SOURCES:
            assert not pretrain.startswith(held_out)
            assert not held_out.startswith(pretrain)


def test_weather_sensors_are_held_out() -> None:
    assert set(WEATHER_SENSOR_SOURCES) <= set(HELD_OUT_SOURCES)


def test_every_sensor_benchmark_series_is_held_out(tmp_path: Path) -> None:
    for source, _ in SENSOR_BENCHMARK_SERIES:
        assert any(
            source == held_out or source.startswith(held_out + "/") for held_out in HELD_OUT_SOURCES
        ), source
        with pytest.raises(HeldOutSourceError):
            load_pretraining_corpus(tmp_path, include=[source])


def test_default_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MOECAST_DATA", raising=False)
    assert (REPO_ROOT / "model" / "data" / "corpus.py").is_file()
    assert default_data_root() == REPO_ROOT.parent / "shared" / "data"
    monkeypatch.setenv("MOECAST_DATA", str(tmp_path))
    assert default_data_root() == tmp_path


# --- the real files in shared/data ----------------------------------------------------------


@pytest.fixture(scope="module")
def data_root() -> Path:
    root = default_data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set MOECAST_DATA to the shared/data folder)")
    return root


@pytest.fixture(scope="module")
def pretraining(data_root: Path) -> list[Series]:
    return load_pretraining_corpus(data_root)


def test_real_pretraining_corpus(pretraining: list[Series]) -> None:
    sources = {s.source.split("/")[0] for s in pretraining}
    assert sources == {"nab", "uci_beijing_pm25", "autoformer_extra"}
    assert not any(s.source.startswith(HELD_OUT_SOURCES) for s in pretraining)
    assert all(s.values.dtype == np.float32 and s.values.ndim == 1 for s in pretraining)
    assert all(np.isfinite(s.values).mean() > 0.9 for s in pretraining)
    intervals = {s.source.rsplit("/", 1)[0]: s.interval_s for s in pretraining}
    assert intervals["nab/data/realAWSCloudwatch"] == 300.0
    assert intervals["nab/data/realAdExchange"] == 3600.0
    assert intervals["uci_beijing_pm25"] == 3600.0
    by_name = {s.name: s for s in pretraining}
    assert by_name["exchange_rate/OT"].interval_s == 86_400.0
    assert by_name["national_illness/ILITOTAL"].interval_s == 7 * 86_400.0


def test_real_beijing_pm25(pretraining: list[Series]) -> None:
    pm25 = {s.name.split("/")[1]: s for s in pretraining if s.source.startswith("uci_beijing")}
    assert sorted(pm25) == ["DEWP", "Ir", "Is", "Iws", "PRES", "TEMP", "pm2.5"]  # No, cbwd: out
    assert pm25["TEMP"].values.size == 43_824  # 2010-01-01 .. 2014-12-31, hourly, no gaps
    assert np.isnan(pm25["pm2.5"].values).sum() == 2067


def test_real_weather_sentinels_gap_and_duplicate(data_root: Path) -> None:
    weather = _by_column(load_series_file(data_root / "weather" / "weather.csv.gz"))
    assert len(weather) == 21
    pressure, co2 = weather["p (mbar)"], weather["OT"]
    assert pressure.interval_s == 600.0
    # 52 696 rows, one duplicated timestamp, one 100-min gap (9 empty 10-min bins).
    assert pressure.values.size == 52_696 - 1 + 9
    assert np.isnan(pressure.values).sum() == 9
    assert np.isnan(co2.values).sum() == 50 + 9  # 50 cells of -9999
    assert np.nanmin(co2.values) > 0


def test_real_air_quality_and_occupancy(data_root: Path) -> None:
    air = _by_column(load_corpus(data_root, ["uci_air_quality"]))
    assert air["T"].interval_s == 3600.0
    assert air["T"].values.size == 9357
    assert np.nanmin(air["CO_GT"].values) > 0  # -200 markers are gone
    assert "NMHC_GT" not in air  # about 90 % missing
    occupancy = load_corpus(data_root, ["uci_occupancy"])
    assert {s.interval_s for s in occupancy} == {60.0}
    assert {s.name.split("/")[1] for s in occupancy} >= {"Temperature", "CO2", "Light"}


def test_real_sensor_benchmark_selection(data_root: Path) -> None:
    series = load_selection(data_root, SENSOR_BENCHMARK_SERIES)
    by_name = {s.name: s for s in series}
    assert len(by_name) == len(series)  # no series twice
    for site in ("723170TYA", "703165TY"):
        temperature = by_name[f"{site}/Dry-bulb (C)"]
        assert temperature.interval_s == 3600.0
        assert temperature.values.size == 8760  # one typical year, every hour, in order
        assert np.isfinite(temperature.values).all()
        assert np.nanmax(by_name[f"{site}/GHI (W/m^2)"].values) > 500
    assert by_name["723170TYA/Pressure (mbar)"].values.min() > 900  # -9900 would be NaN
    assert by_name["weather/T (degC)"].interval_s == 600.0
    assert by_name["ETTm2/OT"].interval_s == 900.0
    assert by_name["soiling_hsu_example_inputs/PM10"].interval_s == 3600.0


def test_real_lstnet_file_has_no_timestamps(data_root: Path) -> None:
    rates = load_series_file(data_root / "lstnet" / "exchange_rate.txt.gz")
    assert len(rates) == 8
    assert all(s.interval_s is None and s.values.size == 7588 for s in rates)
