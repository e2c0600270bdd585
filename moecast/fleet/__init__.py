"""The fleet operator's commands: keygen, sign, publish, status, prune-for. They need no torch,
except prune-for."""
