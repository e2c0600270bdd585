"""The moecast network (PyTorch): Time-MoE-style sparse mixture-of-experts forecaster."""
