"""Forecasting: each tick grids the due streams, runs the bundle once for all of them, encodes
and publishes the forecasts, and raises and clears alerts."""
