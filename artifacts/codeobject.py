"""Reads the kernels and argument layouts out of compiled GPU code objects, in pure Python.

- AMD (`rfc.hsaco`): hipcc --genco writes a clang offload bundle around an ELF code object;
  the ELF's NT_AMDGPU_METADATA note (msgpack) lists `amdhsa.kernels` with each argument's
  name, size and offset.
- NVIDIA (`rfc.cubin`): an ELF whose symbol table names the kernels; each kernel's
  `.nv.info.<name>` section holds EIATTR_KPARAM_INFO records (ordinal, offset, size). A
  cubin keeps no argument names. The common `.nv.info` section holds what ptxas decided per
  function (registers, stack frame) and `.nv.shared.<name>` is a kernel's static shared
  memory: `cubin_resources` reads them.

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
_SHT_NOBITS = 8
_SYM_SIZE = 24  # Elf64_Sym
_STT_FUNC = 2
_STB_GLOBAL = 1
_NT_AMDGPU_METADATA = 32

# .nv.info record formats (EIFMT_*) and the attributes read here (EIATTR_*).
_EIFMT_SVAL = 0x04
_EIATTR_FRAME_SIZE = 0x11  # a function's own stack frame: ptxas -v's "bytes stack frame"
_EIATTR_MIN_STACK_SIZE = 0x12  # its frame plus its callees' deepest stack
_EIATTR_KPARAM_INFO = 0x17
_EIATTR_REGCOUNT = 0x2F
# sm_90 cubins mark the driver's reserved shared memory (cudaDevAttrReservedSharedMemoryPerBlock,
# 1 KiB) with an empty `.nv.shared.reserved.0` section, and each kernel's `.nv.shared.<name>`
# section then holds that 1 KiB before the kernel's own variables; ptxas -v counts only those.
_RESERVED_SHARED_SECTION = ".nv.shared.reserved."
_RESERVED_SHARED_BYTES = 1024


class CodeObjectError(ValueError):
    """The bytes are not a code object of the expected kind, or are malformed."""


@dataclass(frozen=True)
class KernelArg:
    name: str | None  # None where the format keeps no names (cubin)
    size: int
    offset: int


@dataclass(frozen=True)
class CubinResources:
    """What ptxas decided for one kernel of a cubin, as the cubin records it. There is no
    record of spills: ptxas spills registers into the stack frame, so a kernel that spills has
    frame_bytes > 0."""

    name: str
    registers: int  # per thread (EIATTR_REGCOUNT)
    frame_bytes: int  # per thread: its own stack frame in local memory (EIATTR_FRAME_SIZE)
    stack_bytes: int  # per thread: frame_bytes plus what the functions it calls need (EIATTR_MIN_STACK_SIZE)
    shared_bytes: int  # per block: its static shared memory (`.nv.shared.<name>`, less the driver's reserved part)


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
        (shoff,) = struct.unpack_from("<Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
        raw = []
        for i in range(shnum):
            name, typ, _flags, _addr, off, size, link = struct.unpack_from("<IIQQQQI", elf, shoff + i * shentsize)
            raw.append((name, typ, off, size, link))
        strtab_off = raw[shstrndx][2]
        return [_Section(_cstr(elf, strtab_off + n), t, o, s, lk) for n, t, o, s, lk in raw]
    except (struct.error, IndexError, ValueError) as e:
        raise CodeObjectError(f"malformed ELF section table: {e}") from e


def _contents(elf: bytes, sec: _Section) -> bytes:
    """The section's bytes, refused when its offset and size fall outside the file."""
    if sec.type == _SHT_NOBITS or sec.offset + sec.size > len(elf):
        raise CodeObjectError(f"section {sec.name!r} ({sec.size} bytes at {sec.offset}) is not inside the file")
    return elf[sec.offset : sec.offset + sec.size]


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


def _symbols(elf: bytes, sections: list[_Section]) -> list[tuple[str, int]]:
    """(name, st_info) of every entry of the symbol table, by index."""
    table = next((sec for sec in sections if sec.type == _SHT_SYMTAB), None)
    if table is None:
        raise CodeObjectError("no symbol table")
    data = _contents(elf, table)
    if table.link >= len(sections):
        raise CodeObjectError(f"the symbol table's string table is section {table.link} of {len(sections)}")
    names = _contents(elf, sections[table.link])
    symbols = []
    for pos in range(0, len(data) - _SYM_SIZE + 1, _SYM_SIZE):
        st_name, st_info = struct.unpack_from("<IB", data, pos)
        symbols.append((_cstr(names, st_name), st_info))
    return symbols


def _function_symbols(elf: bytes, sections: list[_Section]) -> set[str]:
    # kernels are global functions; nvcc's helper routines are local
    return {name for name, info in _symbols(elf, sections) if info & 0xF == _STT_FUNC and info >> 4 == _STB_GLOBAL}


def _nv_info_records(elf: bytes, sec: _Section):
    """(attribute, payload) of the EIFMT_SVAL records of a `.nv.info*` section: u8 format,
    u8 attribute, u16 payload size, the payload. Records of the other formats are 4 bytes
    (their value in place of the size) and skipped."""
    data = _contents(elf, sec)
    pos = 0
    while pos + 4 <= len(data):
        fmt, attr, size = struct.unpack_from("<BBH", data, pos)
        pos += 4
        if fmt != _EIFMT_SVAL:
            continue
        if pos + size > len(data):
            raise CodeObjectError(
                f"{sec.name}: attribute 0x{attr:02x} runs {pos + size - len(data)} bytes past the section"
            )
        yield attr, data[pos : pos + size]
        pos += size


def _kparams(elf: bytes, sec: _Section) -> tuple[KernelArg, ...]:
    """EIATTR_KPARAM_INFO records: u32 index, u16 ordinal, u16 offset, u32 whose top 14 bits
    are the size in bytes."""
    params: dict[int, KernelArg] = {}
    for attr, payload in _nv_info_records(elf, sec):
        if attr == _EIATTR_KPARAM_INFO and len(payload) >= 12:
            _index, ordinal, offset, bits = struct.unpack_from("<IHHI", payload)
            params[ordinal] = KernelArg(None, (bits >> 18) & 0x3FFF, offset)
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


def cubin_resources(data: bytes) -> dict[str, CubinResources]:
    """Registers, stack and static shared memory of every kernel of a cubin, by name: the
    numbers `nvcc -Xptxas -v` prints, read from the `.nv.info` records (u32 symbol index,
    u32 value) ptxas writes for each function, and the `.nv.shared.<kernel>` section sizes
    (less the driver's reserved shared memory where the cubin places it there)."""
    try:
        sections = _sections(data)
        symbols = _symbols(data, sections)
        per_symbol: dict[int, dict[int, int]] = {}
        for sec in sections:
            if sec.name != ".nv.info":
                continue
            for attr, payload in _nv_info_records(data, sec):
                if attr in (_EIATTR_REGCOUNT, _EIATTR_FRAME_SIZE, _EIATTR_MIN_STACK_SIZE):
                    if len(payload) != 8:
                        raise CodeObjectError(f".nv.info: attribute 0x{attr:02x} has {len(payload)} bytes, 8 expected")
                    index, value = struct.unpack("<II", payload)
                    if index >= len(symbols):
                        raise CodeObjectError(
                            f".nv.info: attribute 0x{attr:02x} names symbol {index} of {len(symbols)}"
                        )
                    per_symbol.setdefault(index, {})[attr] = value
        reserved = _RESERVED_SHARED_BYTES if any(s.name.startswith(_RESERVED_SHARED_SECTION) for s in sections) else 0
        shared = {
            s.name.removeprefix(".nv.shared."): max(0, s.size - reserved)
            for s in sections
            if s.name.startswith(".nv.shared.")
        }
        kernels = {}
        for index, (name, info) in enumerate(symbols):
            if info & 0xF != _STT_FUNC or info >> 4 != _STB_GLOBAL:
                continue
            attrs = per_symbol.get(index, {})
            if _EIATTR_REGCOUNT not in attrs or _EIATTR_FRAME_SIZE not in attrs:
                raise CodeObjectError(f"kernel {name}: no register count or frame size in .nv.info")
            frame = attrs[_EIATTR_FRAME_SIZE]
            kernels[name] = CubinResources(
                name=name,
                registers=attrs[_EIATTR_REGCOUNT],
                frame_bytes=frame,
                stack_bytes=max(frame, attrs.get(_EIATTR_MIN_STACK_SIZE, frame)),
                shared_bytes=shared.get(name, 0),
            )
        return kernels
    except (struct.error, IndexError, ValueError) as e:
        if isinstance(e, CodeObjectError):
            raise
        raise CodeObjectError(f"malformed cubin: {e}") from e
