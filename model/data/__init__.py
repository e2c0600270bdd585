"""Pretraining data: synthetic generator families, gap simulation, and the real-series corpus.

No torch: the generators and gap simulation need numpy alone, the corpus loader adds pandas.
"""

from moecast.model.data.corpus import (
    HELD_OUT_SOURCES,
    LONG_HORIZON_SOURCES,
    PRETRAIN_SOURCES,
    SENSOR_BENCHMARK_SERIES,
    SENSOR_BENCHMARK_SOURCES,
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
from moecast.model.data.cycles import CyclesSpec, cycles, draw_cycles_spec, render_cycles
from moecast.model.data.gaps import drop_readings, irregular_sample
from moecast.model.data.kernel_synth import Kernel, draw_kernel, kernel_synth, sample_gp
from moecast.model.data.mixture import GENERATORS, SeriesGenerator, SyntheticMixture
from moecast.model.data.ou import OUSpec, draw_ou_spec, ou_series, render_ou
from moecast.model.data.sensor import SensorSpec, draw_sensor_spec, render_sensor, sensor_like
from moecast.model.data.trend_seasonal import (
    TrendSeasonalSpec,
    draw_trend_seasonal_spec,
    render_trend_seasonal,
    trend_seasonal,
)

__all__ = [
    "GENERATORS",
    "HELD_OUT_SOURCES",
    "LONG_HORIZON_SOURCES",
    "PRETRAIN_SOURCES",
    "SENSOR_BENCHMARK_SERIES",
    "SENSOR_BENCHMARK_SOURCES",
    "WEATHER_SENSOR_SOURCES",
    "CorpusError",
    "CyclesSpec",
    "HeldOutSourceError",
    "Kernel",
    "OUSpec",
    "SensorSpec",
    "Series",
    "SeriesGenerator",
    "SyntheticMixture",
    "TrendSeasonalSpec",
    "cycles",
    "default_data_root",
    "draw_cycles_spec",
    "draw_kernel",
    "draw_ou_spec",
    "draw_sensor_spec",
    "draw_trend_seasonal_spec",
    "drop_readings",
    "irregular_sample",
    "kernel_synth",
    "load_corpus",
    "load_pretraining_corpus",
    "load_selection",
    "load_series_file",
    "ou_series",
    "render_cycles",
    "render_ou",
    "render_sensor",
    "render_trend_seasonal",
    "sample_gp",
    "sensor_like",
    "trend_seasonal",
]
