"""Operations: metrics (MQTT and Prometheus) and the heartbeat file."""
