"""Model updates: the bundle receiver (announcement to verified slot, on its own thread), the
A/B slots, and the active model (swap, trial, commit or roll back, on the tick thread)."""
