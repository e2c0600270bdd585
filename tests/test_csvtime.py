"""Finding the time axis of real CSV files (moecast.csvtime): no pandas needed."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from moecast.csvtime import TimeColumnError, find_time_axis, read_csv_columns

REPO = Path(__file__).resolve().parents[1]


def utc(*fields: int) -> float:
    return datetime(*fields, tzinfo=UTC).timestamp()  # type: ignore[arg-type]


def test_split_year_month_day_hour_columns_win_over_a_row_number() -> None:
    """The Beijing PM2.5 layout: `No` is a row number, not a time."""
    columns = {
        "No": ["1", "2", "3"],
        "year": ["2010", "2010", "2010"],
        "month": ["1", "1", "1"],
        "day": ["1", "1", "1"],
        "hour": ["0", "1", "2"],
        "pm2.5": ["", "", "129"],
    }
    axis = find_time_axis(columns)
    assert axis is not None
    assert axis.columns == ("year", "month", "day", "hour")
    np.testing.assert_array_equal(axis.ts, [utc(2010, 1, 1, h) for h in range(3)])


def test_integer_columns_are_never_taken_for_time() -> None:
    assert find_time_axis({"No": ["1", "2", "3"], "value": ["1.5", "2", "3"]}) is None
    # ... unless named like a timestamp and holding unix times (seconds or milliseconds).
    axis = find_time_axis({"ts": ["1700000000", "1700000060"], "v": ["1", "2"]})
    assert axis is not None
    assert list(axis.ts) == [1.7e9, 1.7e9 + 60]
    axis = find_time_axis({"timestamp": ["1700000000000", "1700000060000"], "v": ["1", "2"]})
    assert axis is not None
    assert axis.how == "unix milliseconds"


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        (["2013-07-04 00:00:00", "2013-07-04 01:00:00"], [utc(2013, 7, 4), utc(2013, 7, 4, 1)]),
        (["2013-07-04T00:00:00Z", "2013-07-04T01:00:00+01:00"], [utc(2013, 7, 4)] * 2),
        (["25/12/2020 10:00", "26/12/2020 10:00"], [utc(2020, 12, 25, 10), utc(2020, 12, 26, 10)]),
        (["12/25/2020", "12/26/2020"], [utc(2020, 12, 25), utc(2020, 12, 26)]),
        (["01.02.2021 00:00:00", "02.02.2021 00:00:00"], [utc(2021, 2, 1), utc(2021, 2, 2)]),
    ],
)
def test_common_date_formats(cells: list[str], expected: list[float]) -> None:
    axis = find_time_axis({"id": ["7", "8"], "when": cells, "v": ["1", "2"]})
    assert axis is not None
    assert axis.columns == ("when",)
    np.testing.assert_array_equal(axis.ts, expected)


def test_a_date_and_a_time_column_are_joined() -> None:
    columns = {"Date": ["10/03/2004", "10/03/2004"], "Time": ["18.00.00", "19.00.00"]}
    axis = find_time_axis({**columns, "CO": ["2.6", "2"]})
    assert axis is not None
    assert axis.columns == ("Date", "Time")
    np.testing.assert_array_equal(axis.ts, [utc(2004, 3, 10, 18), utc(2004, 3, 10, 19)])


def test_a_named_column_that_holds_no_times_is_a_clear_error() -> None:
    with pytest.raises(TimeColumnError, match="no column 'when'"):
        find_time_axis({"v": ["1"]}, "when")
    with pytest.raises(TimeColumnError, match="does not hold dates"):
        find_time_axis({"v": ["1.5", "2.5"]}, "v")


def test_reading_gzip_and_row_name_files(tmp_path: Path) -> None:
    path = tmp_path / "occupancy.csv.gz"
    # R's write.csv: the header has no field for the row names.
    path.write_bytes(gzip.compress(b'"date","CO2"\n"1","2015-02-02 14:19:00",721\n'))
    columns = read_csv_columns(path)
    assert list(columns) == ["", "date", "CO2"]
    axis = find_time_axis(columns)
    assert axis is not None
    assert axis.columns == ("date",)


def test_the_shipped_sample_has_an_hourly_time_axis() -> None:
    columns = read_csv_columns(REPO / "samples" / "office_temperature.csv")
    axis = find_time_axis(columns)
    assert axis is not None
    assert axis.columns == ("timestamp",)
    assert len(axis.ts) == 480
    assert set(np.diff(axis.ts)) == {3600.0}
