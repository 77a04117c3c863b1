"""The format table (artifacts/formats.py) as template constants. Every prelude renders
templates/rfc_formats.h.j2 (the cpu one cpu_formats.h.j2 too) from these rows, so kernels
find a format's geometry, row decoder and cpu dot steps through its row, as ggml's kernels
find theirs through type_traits, never through a list written again in a header.
"""

from rfc.artifacts.formats import FORMATS, Kernels
from rfc.artifacts.quant_tables import GRIDS, KVALUES_FP4, KVALUES_IQ4NL, ksigns


def format_rows(kernels: Kernels) -> list[dict]:
    """The table's rows of the formats `kernels` read, in table order, as the numbers and
    identifiers the templates take."""
    rows = []
    for f in FORMATS.values():
        if kernels not in f.kernels:
            continue
        unit, unit_bytes = f.cpu_dot_step
        rows.append({
            "FMT": f.name, "fmt": f.name.lower(), "qk": f.block_elems, "ts": f.block_bytes,
            "gguf": f.is_gguf,  # a block struct and decoder in rfc_blocks.h
            "quantized": not f.is_float,
            "unit": unit, "unit_bytes": unit_bytes,  # cpu: one step of the dot along a row
            "act": f.cpu_act or "f32", "int8": f.cpu_act is not None,  # cpu: the activations its AVX2 dot reads
            "unpack": f.cpu_unpack,  # cpu: its AVX2 dot unpacks sub-blocks (cpu_dot_lut.h)
        })  # fmt: skip
    return rows


def format_tables() -> dict:
    """The constant tables of the formats decoded through them (artifacts/quant_tables.py), as
    the numbers templates/rfc_tables.h.j2 renders: grid entries as 32-bit words."""
    return {
        "kvalues_iq4nl": list(KVALUES_IQ4NL), "kvalues_fp4": list(KVALUES_FP4), "ksigns": list(ksigns()),
        "grids": [{"name": name, "size": g.size, "width": g.width, "words": list(g.words)}
                  for name, g in GRIDS.items()],
    }  # fmt: skip


def format_params(kernels: Kernels) -> dict:
    """What every prelude renders the format table from: its rows and its tables."""
    return {"formats": format_rows(kernels), "tables": format_tables()}
