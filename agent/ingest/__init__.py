"""Ingestion: the MQTT link, the inbox, payload parsing, streams, the SQLite store and the
single writer that acknowledges a reading only once it is committed."""
