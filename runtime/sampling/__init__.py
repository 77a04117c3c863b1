"""Choosing the next token: logit processing and seeded draws, exact selection over large vocabularies, constrained
decoding and its limits."""
