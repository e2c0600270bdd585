"""The moecast edge agent: MQTT in, forecasts and alerts out. Never imports torch."""
