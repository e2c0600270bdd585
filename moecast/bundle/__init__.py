"""The bundle format (manifest, signature, verification) and the update wire format: the one
contract that the agent (the reading side) and quantization and fleet (the writing side) both
import."""
