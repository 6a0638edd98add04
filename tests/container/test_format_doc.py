"""runtime/FORMAT.md is the specification: its tables must match format.py and the C runtime."""
from __future__ import annotations

import re
import struct
from pathlib import Path

from edgecompile.container import format as fmt

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "runtime" / "FORMAT.md").read_text()
TYPE_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q"}


def _table(heading: str) -> list[list[str]]:
    """Rows of the first markdown table after a heading line."""
    lines = DOC[DOC.index(heading + "\n"):].splitlines()[1:]
    rows = []
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-"):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the column names


def _check_fields(heading: str, fields, st: struct.Struct) -> None:
    rows = _table(heading)
    assert [r[3] for r in rows] == [name for name, _ in fields], heading
    offset = 0
    for (off, size, typ, name, _), (_fname, code) in zip(rows, fields):
        assert int(off) == offset, f"{heading}: {name} at {off}, code has {offset}"
        assert int(size) == struct.calcsize("<" + code), f"{heading}: size of {name}"
        m = re.fullmatch(r"(u8|u16|u32|u64)(?:\[(\d+)\])?", typ)
        if m:
            assert code == (m.group(2) or "") + TYPE_CODES[m.group(1)], f"{heading}: type of {name}"
        else:
            assert typ == "bytes" and code.endswith("s")
        offset += int(size)
    assert offset == st.size


def test_header_entry_and_payload_headers_match_the_document():
    _check_fields("## Header", fmt.HEADER_FIELDS, fmt.HEADER)
    _check_fields("## Tensor entry", fmt.ENTRY_FIELDS, fmt.ENTRY)
    _check_fields("rANS payload header (12 bytes):", fmt.RANS_HEADER_FIELDS, fmt.RANS_HEADER)
    _check_fields("### lut (3)", fmt.LUT_HEADER_FIELDS, fmt.LUT_HEADER)
    assert "`ECW1`" in DOC and fmt.MAGIC == b"ECW1"


def test_code_tables_match_the_document():
    dtypes = {int(c): (n, int(s)) for c, n, s in _table("### dtype codes")}
    assert dtypes == {c: (dt.name, dt.itemsize) for c, dt in fmt.DTYPES.items()}
    assert {int(c): n for c, n in _table("### codec codes")} == fmt.CODECS
    assert {int(c): n for c, n in _table("### layout codes")} == fmt.LAYOUTS


def test_c_runtime_uses_the_same_constants():
    src = (ROOT / "runtime" / "src" / "ecw_container.c").read_text()
    header = (ROOT / "runtime" / "src" / "ecw_internal.h").read_text()
    assert f"#define ECW_HEADER_SIZE {fmt.HEADER.size}u" in header
    assert f"#define ECW_ENTRY_SIZE {fmt.ENTRY.size}u" in header
    n, sizes = re.search(r"size\[(\d+)\] = \{([^}]*)\}", src).groups()
    assert int(n) == max(fmt.DTYPES) + 1 and f"dtype < {n}u" in src
    assert [int(v) for v in sizes.split(",")] == [0] + [fmt.DTYPES[c].itemsize for c in range(1, int(n))]
    # entry fields read by ecw_tensor_at through their named offsets (values: the test below)
    for name in ("encoded_size", "decoded_size", "crc32", "name_off", "name_len", "quant_off", "quant_count", "dims"):
        assert re.search(rf"e \+ ECW_ENT_{name.upper()}\b", src), name
    assert "e[ECW_ENT_DTYPE]" in src and "e[ECW_ENT_CODEC]" in src and "e[ECW_ENT_QUANT_AXIS]" in src


def test_c_field_offsets_match_format_py():
    """ecw_internal.h names every field offset (ECW_HDR_*, ECW_ENT_*, ECW_RANS_HDR_*, ECW_LUT_HDR_*) and
    record size; each must be the offset `struct` gives the same field in format.py."""
    header = (ROOT / "runtime" / "src" / "ecw_internal.h").read_text()
    defined = {m[0]: int(m[1]) for m in re.findall(r"#define (ECW_\w+) (\d+)u\b", header)}
    records = {"ECW_HDR_": (fmt.HEADER_FIELDS, "ECW_HEADER_SIZE"), "ECW_ENT_": (fmt.ENTRY_FIELDS, "ECW_ENTRY_SIZE"),
               "ECW_RANS_HDR_": (fmt.RANS_HEADER_FIELDS, "ECW_RANS_HEADER_SIZE"),
               "ECW_LUT_HDR_": (fmt.LUT_HEADER_FIELDS, "ECW_LUT_HEADER_SIZE")}
    for prefix, (fields, size_name) in records.items():
        offset, expected = 0, {}
        for name, code in fields:
            expected[prefix + name.upper()] = offset
            offset += struct.calcsize("<" + code)
        got = {k: v for k, v in defined.items() if k.startswith(prefix)}
        assert got == expected, prefix
        assert defined[size_name] == offset, size_name
    src = (ROOT / "runtime" / "src" / "ecw_container.c").read_text()
    assert not re.search(r"\b[ep] \+ \d", src), "a field offset written as a literal in ecw_container.c"
