"""Placeholder: kernel generation for this family is being written."""


def build(inp) -> dict:
    return {}
