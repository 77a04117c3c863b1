"""A bundle in memory: verification and loading, and numpy decoders of the GGUF weight formats the reference device
uses."""
