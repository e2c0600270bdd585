"""`moecast demo`: a simulated site, an MQTT broker and the real agent in one process, with a
live dashboard and a report scored against what the site really did next. Needs no torch."""
