"""Reads the kernels and argument layouts out of compiled GPU code objects, in pure Python.

- AMD (`rfc.hsaco`): hipcc --genco writes a clang offload bundle around an ELF code object;
  the ELF's NT_AMDGPU_METADATA note (msgpack) lists `amdhsa.kernels` with each argument's
  name, size and offset.
- NVIDIA (`rfc.cubin`): an ELF whose symbol table names the kernels; each kernel's
  `.nv.info.<name>` section holds EIATTR_KPARAM_INFO records (ordinal, offset, size). A
  cubin keeps no argument names.

Only the standard library and msgpack: the runtime checks what it launches without any
toolchain, and the compiler reads its own output with the same code.
"""

import struct
from dataclasses import dataclass

import msgpack

OFFLOAD_BUNDLE_MAGIC = b"__CLANG_OFFLOAD_BUNDLE__"
ELF_MAGIC = b"\x7fELF"

_SHT_SYMTAB = 2
_SHT_NOTE = 7
_STT_FUNC = 2
_STB_GLOBAL = 1
_NT_AMDGPU_METADATA = 32

# .nv.info record formats (EIFMT_*) and the attributes read here (EIATTR_*).
_EIFMT_SVAL = 0x04
_EIATTR_KPARAM_INFO = 0x17


class CodeObjectError(ValueError):
    """The bytes are not a code object of the expected kind, or are malformed."""


@dataclass(frozen=True)
class KernelArg:
    name: str | None  # None where the format keeps no names (cubin)
    size: int
    offset: int


@dataclass(frozen=True)
class KernelInfo:
    name: str
    args: tuple[KernelArg, ...]  # explicit arguments in declaration order (no hidden ones)
    max_threads: int | None = None  # largest block the kernel was built for, when known
    wave_size: int | None = None


# -- clang offload bundles -----------------------------------------------------------------


def unbundle(data: bytes, arch: str) -> bytes:
    """The ELF code object for `arch` (e.g. "gfx1100"); `data` itself when it is an ELF."""
    if data[:4] == ELF_MAGIC:
        return data
    if not data.startswith(OFFLOAD_BUNDLE_MAGIC):
        raise CodeObjectError("neither an ELF code object nor a clang offload bundle")
    try:
        pos = len(OFFLOAD_BUNDLE_MAGIC)
        (count,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        found = []
        for _ in range(count):
            offset, size, id_len = struct.unpack_from("<QQQ", data, pos)
            pos += 24
            bundle_id = data[pos : pos + id_len].decode("ascii")
            pos += id_len
            found.append(bundle_id)
            # ids look like "hipv4-amdgcn-amd-amdhsa--gfx90a" (":xnack-" style features may follow)
            if bundle_id.startswith("hip") and bundle_id.rsplit("--", 1)[-1].split(":")[0] == arch:
                elf = data[offset : offset + size]
                if elf[:4] != ELF_MAGIC or len(elf) != size:
                    raise CodeObjectError(f"offload bundle entry {bundle_id} is not a whole ELF")
                return elf
    except (struct.error, UnicodeDecodeError) as e:
        raise CodeObjectError(f"malformed clang offload bundle: {e}") from e
    raise CodeObjectError(f"offload bundle has no code object for {arch} (entries: {', '.join(found)})")


# -- ELF -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Section:
    name: str
    type: int
    offset: int
    size: int
    link: int


def _sections(elf: bytes) -> list[_Section]:
    if elf[:4] != ELF_MAGIC or elf[4] != 2 or elf[5] != 1:
        raise CodeObjectError("not a little-endian 64-bit ELF")
    try:
        shoff, = struct.unpack_from("<Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
        raw = []
        for i in range(shnum):
            name, typ, _flags, _addr, off, size, link = struct.unpack_from("<IIQQQQI", elf, shoff + i * shentsize)
            raw.append((name, typ, off, size, link))
        strtab_off = raw[shstrndx][2]
        return [_Section(_cstr(elf, strtab_off + n), t, o, s, lk) for n, t, o, s, lk in raw]
    except (struct.error, IndexError) as e:
        raise CodeObjectError(f"malformed ELF section table: {e}") from e


def _cstr(data: bytes, pos: int) -> str:
    end = data.index(b"\0", pos)
    return data[pos:end].decode("utf-8", "replace")


def _notes(elf: bytes, section: _Section):
    pos, end = section.offset, section.offset + section.size
    while pos + 12 <= end:
        namesz, descsz, typ = struct.unpack_from("<III", elf, pos)
        pos += 12
        name = elf[pos : pos + namesz].rstrip(b"\0").decode("ascii", "replace")
        pos += (namesz + 3) & ~3
        desc = elf[pos : pos + descsz]
        pos += (descsz + 3) & ~3
        yield name, typ, desc


# -- AMD code objects ------------------------------------------------------------------------


def amdgpu_metadata(elf: bytes) -> dict:
    """The decoded NT_AMDGPU_METADATA note of an AMD ELF code object."""
    for sec in _sections(elf):
        if sec.type != _SHT_NOTE:
            continue
        for name, typ, desc in _notes(elf, sec):
            if name == "AMDGPU" and typ == _NT_AMDGPU_METADATA:
                try:
                    return msgpack.unpackb(desc)
                except (ValueError, msgpack.UnpackException) as e:
                    raise CodeObjectError(f"unreadable AMDGPU metadata note: {e}") from e
    raise CodeObjectError("no NT_AMDGPU_METADATA note (not an AMD HSA code object v3+)")


def _arg_name(raw: dict) -> str | None:
    name = raw.get(".name")
    # clang passes pointers to HIP kernels as coerced values named "<name>.coerce"
    return name.removesuffix(".coerce") if isinstance(name, str) else None


def read_hsaco(data: bytes, arch: str) -> dict[str, KernelInfo]:
    """Kernels of an AMD code object (bundled or not) by name, hidden arguments left out."""
    meta = amdgpu_metadata(unbundle(data, arch))
    kernels = {}
    try:
        for k in meta["amdhsa.kernels"]:
            args = tuple(
                KernelArg(_arg_name(a), int(a[".size"]), int(a[".offset"]))
                for a in k.get(".args", [])
                if not str(a.get(".value_kind", "")).startswith("hidden_")
            )
            kernels[k[".name"]] = KernelInfo(
                name=k[".name"],
                args=args,
                max_threads=k.get(".max_flat_workgroup_size"),
                wave_size=k.get(".wavefront_size"),
            )
    except (KeyError, TypeError, ValueError) as e:
        raise CodeObjectError(f"unexpected AMDGPU metadata layout: {e}") from e
    return kernels


# -- NVIDIA cubins ---------------------------------------------------------------------------


def _function_symbols(elf: bytes, sections: list[_Section]) -> set[str]:
    names = set()
    for sec in sections:
        if sec.type != _SHT_SYMTAB:
            continue
        strtab = sections[sec.link]
        for pos in range(sec.offset, sec.offset + sec.size, 24):
            st_name, st_info = struct.unpack_from("<IB", elf, pos)
            # kernels are global functions; nvcc's helper routines are local
            if st_info & 0xF == _STT_FUNC and st_info >> 4 == _STB_GLOBAL:
                names.add(_cstr(elf, strtab.offset + st_name))
    return names


def _kparams(elf: bytes, sec: _Section) -> tuple[KernelArg, ...]:
    """EIATTR_KPARAM_INFO records: u32 index, u16 ordinal, u16 offset, u32 whose top 14 bits
    are the size in bytes. Other records are 4 bytes, or 4 + u16 size for EIFMT_SVAL."""
    params: dict[int, KernelArg] = {}
    pos, end = sec.offset, sec.offset + sec.size
    while pos + 4 <= end:
        fmt, attr = elf[pos], elf[pos + 1]
        if fmt != _EIFMT_SVAL:
            pos += 4
            continue
        (size,) = struct.unpack_from("<H", elf, pos + 2)
        if attr == _EIATTR_KPARAM_INFO and size >= 12:
            _index, ordinal, offset, bits = struct.unpack_from("<IHHI", elf, pos + 4)
            params[ordinal] = KernelArg(None, (bits >> 18) & 0x3FFF, offset)
        pos += 4 + size
    if sorted(params) != list(range(len(params))):
        raise CodeObjectError(f"{sec.name}: parameter ordinals {sorted(params)} are not contiguous")
    return tuple(params[i] for i in range(len(params)))


def read_cubin(data: bytes) -> dict[str, KernelInfo]:
    """Kernels of a cubin by name, with parameter sizes and offsets (no names)."""
    try:
        sections = _sections(data)
        functions = _function_symbols(data, sections)
        info = {s.name.removeprefix(".nv.info."): s for s in sections if s.name.startswith(".nv.info.")}
        return {
            name: KernelInfo(name=name, args=_kparams(data, info[name]) if name in info else ())
            for name in sorted(functions)
        }
    except (struct.error, IndexError, ValueError) as e:
        if isinstance(e, CodeObjectError):
            raise
        raise CodeObjectError(f"malformed cubin: {e}") from e
