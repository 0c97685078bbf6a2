"""The SQLite file format, as far as a diff needs it: pure functions on page bytes.

Only the structure is read here (https://www.sqlite.org/fileformat2.html): the
database header, b-tree page headers and cell pointers, table-interior keys,
where a cell's payload continues in overflow pages, the freelist, pointer-map
and lock-byte pages. Rows themselves are always read through SQLite.

Page bytes come from a backup (untrusted): every offset is bounds-checked and a
malformed page raises ``MalformedPage``, never an IndexError or a loop.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

HEADER_SIZE = 100
TABLE_INTERIOR = 0x05
TABLE_LEAF = 0x0D
INDEX_INTERIOR = 0x02
INDEX_LEAF = 0x0A
PAGE_TYPES = (TABLE_INTERIOR, TABLE_LEAF, INDEX_INTERIOR, INDEX_LEAF)
MIN_KEY = -(1 << 63)
MAX_KEY = (1 << 63) - 1
LOCK_BYTE_OFFSET = 1 << 30
MAX_DEPTH = 40  # a b-tree of 2^32 pages is at most ~20 deep even with fan-out 4

ReadPage = Callable[[int], bytes]


class MalformedPage(ValueError):
    """A page does not hold what the SQLite file format says it must."""


@dataclass(frozen=True, slots=True)
class DatabaseHeader:
    page_size: int
    reserved: int  # bytes reserved at the end of each page
    freelist_trunk: int  # first freelist trunk page, 0 if none
    freelist_count: int
    auto_vacuum: bool  # pointer-map pages exist
    text_encoding: int

    @property
    def usable(self) -> int:
        return self.page_size - self.reserved


def parse_header(data: bytes) -> DatabaseHeader:
    """The 100-byte database header at the start of page 1."""
    if len(data) < HEADER_SIZE or not data.startswith(b"SQLite format 3\0"):
        raise MalformedPage("not an SQLite database (no SQLite header)")
    (raw_size,) = struct.unpack_from(">H", data, 16)
    page_size = 65536 if raw_size == 1 else raw_size
    if page_size < 512 or page_size & (page_size - 1):
        raise MalformedPage(f"page size {raw_size} is not a power of two from 512 to 65536")
    reserved = data[20]
    if page_size - reserved < 480:
        raise MalformedPage("too many reserved bytes per page")
    trunk, count = struct.unpack_from(">II", data, 32)
    (largest_root,) = struct.unpack_from(">I", data, 52)
    (encoding,) = struct.unpack_from(">I", data, 56)
    return DatabaseHeader(page_size, reserved, trunk, count, largest_root != 0, encoding)


def varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the SQLite varint at ``pos`` (1 to 9 bytes)."""
    value = 0
    for i in range(8):
        if pos + i >= len(data):
            raise MalformedPage("a varint runs past the end of the page")
        byte = data[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return _signed(value), pos + i + 1
    if pos + 8 >= len(data):
        raise MalformedPage("a varint runs past the end of the page")
    return _signed((value << 8) | data[pos + 8]), pos + 9


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True, slots=True)
class BtreePage:
    """A b-tree page's type, cell offsets (in page order) and right-most child."""

    kind: int
    cells: tuple[int, ...]
    right_child: int  # interior pages only, else 0

    @property
    def interior(self) -> bool:
        return self.kind in (TABLE_INTERIOR, INDEX_INTERIOR)

    @property
    def table(self) -> bool:
        return self.kind in (TABLE_INTERIOR, TABLE_LEAF)


def parse_page(data: bytes, pgno: int) -> BtreePage:
    """The b-tree page header and cell pointer array of page ``pgno`` (its bytes)."""
    start = HEADER_SIZE if pgno == 1 else 0
    if len(data) < start + 8:
        raise MalformedPage(f"page {pgno} is too short")
    kind = data[start]
    if kind not in PAGE_TYPES:
        raise MalformedPage(f"page {pgno} is not a b-tree page (type {kind})")
    (count,) = struct.unpack_from(">H", data, start + 3)
    interior = kind in (TABLE_INTERIOR, INDEX_INTERIOR)
    head = start + (12 if interior else 8)
    right = struct.unpack_from(">I", data, start + 8)[0] if interior else 0
    if head + 2 * count > len(data):
        raise MalformedPage(f"page {pgno}: its cell pointers run past its end")
    cells = struct.unpack_from(f">{count}H", data, head)
    if any(not head + 2 * count <= cell < len(data) for cell in cells):
        raise MalformedPage(f"page {pgno}: a cell lies outside the page")
    return BtreePage(kind, cells, right)


def table_interior_cells(data: bytes, page: BtreePage) -> list[tuple[int, int]]:
    """(left child, key) of each cell of a table-interior page: keys <= key lie left."""
    out = []
    for cell in page.cells:
        if cell + 4 > len(data):
            raise MalformedPage("a cell runs past the end of its page")
        (child,) = struct.unpack_from(">I", data, cell)
        key, _ = varint(data, cell + 4)
        out.append((child, key))
    return out


def interior_children(data: bytes, page: BtreePage) -> list[int]:
    """The child pages of an interior page (table or index), left to right."""
    children = []
    for cell in page.cells:
        if cell + 4 > len(data):
            raise MalformedPage("a cell runs past the end of its page")
        children.append(struct.unpack_from(">I", data, cell)[0])
    children.append(page.right_child)
    return children


def local_payload(kind: int, payload: int, usable: int) -> int:
    """How many payload bytes of a cell lie on its b-tree page (the rest overflows)."""
    most = usable - 35 if kind == TABLE_LEAF else (usable - 12) * 64 // 255 - 23
    if payload <= most:
        return payload
    least = (usable - 12) * 32 // 255 - 23
    keep = least + (payload - least) % (usable - 4)
    return keep if keep <= most else least


def first_overflow(data: bytes, kind: int, cell: int, usable: int) -> tuple[int, int]:
    """(first overflow page or 0, payload bytes in overflow pages) of one cell."""
    if kind == TABLE_INTERIOR:
        return 0, 0
    pos = cell + 4 if kind == INDEX_INTERIOR else cell
    payload, pos = varint(data, pos)
    if payload < 0:
        raise MalformedPage("a cell has a negative payload size")
    if kind == TABLE_LEAF:
        _, pos = varint(data, pos)  # the rowid
    local = local_payload(kind, payload, usable)
    if local == payload:
        return 0, 0
    end = pos + local
    if end + 4 > len(data):
        raise MalformedPage("a cell's overflow pointer lies past the end of its page")
    (overflow,) = struct.unpack_from(">I", data, end)
    return overflow, payload - local


def overflow_chain(
    read_page: ReadPage, first: int, spilled: int, usable: int, page_count: int
) -> Iterator[int]:
    """The overflow pages holding ``spilled`` payload bytes, from ``first`` on."""
    pgno, left = first, spilled
    for _ in range(page_count):
        if not 1 < pgno <= page_count:
            raise MalformedPage(f"an overflow chain points at page {pgno}")
        yield pgno
        left -= usable - 4
        if left <= 0:
            return
        (pgno,) = struct.unpack_from(">I", read_page(pgno), 0)
    raise MalformedPage("an overflow chain is longer than the database")


def freelist(read_page: ReadPage, header: DatabaseHeader, page_count: int) -> set[int]:
    """Every freelist page (trunks and leaves)."""
    pages: set[int] = set()
    trunk = header.freelist_trunk
    while trunk:
        if not 1 < trunk <= page_count or trunk in pages:
            raise MalformedPage(f"the freelist points at page {trunk}")
        pages.add(trunk)
        data = read_page(trunk)
        following, count = struct.unpack_from(">II", data, 0)
        if count > (header.usable - 8) // 4:
            raise MalformedPage(f"freelist trunk page {trunk} lists too many pages")
        pages.update(struct.unpack_from(f">{count}I", data, 8))
        trunk = following
    return pages


def pointer_map_pages(header: DatabaseHeader, page_count: int) -> set[int]:
    """The pointer-map pages of an auto-vacuum database (none otherwise)."""
    if not header.auto_vacuum:
        return set()
    step = header.usable // 5 + 1
    return set(range(2, page_count + 1, step))


def lock_byte_page(page_size: int) -> int:
    """The page holding the lock bytes (never used; present in files over 1 GiB)."""
    return LOCK_BYTE_OFFSET // page_size + 1


def _visit(children: list[tuple[int, int, int]], seen: set[int], page_count: int) -> None:
    for child, _low, _high in children:
        if not 0 < child <= page_count or child in seen:
            raise MalformedPage(f"a b-tree points at page {child} twice or out of range")
        seen.add(child)


def _children(data: bytes, page: BtreePage, low: int, high: int) -> list[tuple[int, int, int]]:
    """(child, low, high) of an interior page whose keys lie in ``(low, high]``."""
    if not page.table:
        return [(child, MIN_KEY - 1, MAX_KEY) for child in interior_children(data, page)]
    children = []
    previous = low
    for child, key in table_interior_cells(data, page):
        children.append((child, previous, min(key, high)))
        previous = max(previous, min(key, high))
    children.append((page.right_child, previous, high))
    return children


@dataclass(slots=True)
class TreeShape:
    """One b-tree's pages: its interior pages and its leaves, with each leaf's key range
    (table trees: keys in ``(low, high]``; index trees: the full range)."""

    interior: set[int] = field(default_factory=set)
    leaves: dict[int, tuple[int, int]] = field(default_factory=dict)
    table: bool = True


def tree_shape(read_page: ReadPage, root: int, page_count: int) -> TreeShape:
    """Walk a b-tree from ``root`` reading only its interior pages (and one leaf).

    SQLite's b-trees are balanced (every leaf at the same depth), so once one child
    of a level is a leaf, all of that level are: leaves are never read here. A
    leaf's range comes from the separator keys above it, so a row whose key lies in
    it can only be on that leaf. Cycles and pages shared between branches raise.
    """
    shape = TreeShape()
    seen = {root}
    if not 0 < root <= page_count:
        raise MalformedPage(f"a b-tree root is page {root}, past the end of the database")
    data = read_page(root)
    page = parse_page(data, root)
    shape.table = page.table
    if not page.interior:
        shape.leaves[root] = (MIN_KEY - 1, MAX_KEY)
        return shape
    level = [(root, data, page, MIN_KEY - 1, MAX_KEY)]
    for _depth in range(MAX_DEPTH):
        children: list[tuple[int, int, int]] = []
        for pgno, data, page, low, high in level:
            shape.interior.add(pgno)
            if page.table != shape.table:
                raise MalformedPage(f"page {pgno} mixes table and index b-trees")
            if page.table:
                previous = low
                for child, key in table_interior_cells(data, page):
                    children.append((child, previous, min(key, high)))
                    previous = max(previous, min(key, high))
                children.append((page.right_child, previous, high))
            else:
                children.extend(
                    (child, MIN_KEY - 1, MAX_KEY) for child in interior_children(data, page)
                )
        _visit(children, seen, page_count)
        first = parse_page(read_page(children[0][0]), children[0][0])
        if not first.interior:
            shape.leaves.update((child, (low, high)) for child, low, high in children)
            return shape
        level = []
        for child, low, high in children:
            data = read_page(child)
            page = parse_page(data, child)
            if not page.interior:
                raise MalformedPage(f"the b-tree's leaves are not all at one depth (page {child})")
            level.append((child, data, page, low, high))
    raise MalformedPage("a b-tree is deeper than any SQLite database")


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}
_ENCODINGS = {1: "utf-8", 2: "utf-16-le", 3: "utf-16-be"}


def record_prefix(
    data: bytes, kind: int, cell: int, usable: int, count: int, encoding: int
) -> tuple[object, ...] | None:
    """The first ``count`` values of an index-format cell's record (a WITHOUT ROWID
    table's primary key); None when they do not all lie on the page (overflow)."""
    if kind not in (INDEX_LEAF, INDEX_INTERIOR):
        raise MalformedPage("a record prefix is read from index b-tree cells only")
    pos = cell + 4 if kind == INDEX_INTERIOR else cell
    payload, pos = varint(data, pos)
    local = local_payload(kind, payload, usable)
    record = data[pos : pos + local]
    if len(record) < local:
        raise MalformedPage("a cell's payload runs past the end of its page")
    try:
        header_size, at = varint(record, 0)
        types: list[int] = []
        while at < header_size and len(types) < count:
            serial, at = varint(record, at)
            types.append(serial)
    except MalformedPage:
        return None  # the record header itself overflows
    if header_size > len(record):
        return None
    if len(types) < count:
        raise MalformedPage("a record holds fewer values than its key")
    values: list[object] = []
    body = header_size
    for serial in types:
        size = _serial_size(serial)
        if body + size > len(record):
            return None
        values.append(_serial_value(serial, record[body : body + size], encoding))
        body += size
    return tuple(values)


def _serial_size(serial: int) -> int:
    if serial in _INT_SIZES:
        return _INT_SIZES[serial]
    if serial == 7:
        return 8
    if serial in (0, 8, 9):
        return 0
    if serial >= 12:
        return (serial - 12) // 2
    raise MalformedPage(f"a record has the reserved serial type {serial}")


def _serial_value(serial: int, raw: bytes, encoding: int) -> object:
    if serial == 0:
        return None
    if serial in _INT_SIZES:
        return int.from_bytes(raw, "big", signed=True)
    if serial == 7:
        return struct.unpack(">d", raw)[0]
    if serial in (8, 9):
        return serial - 8
    if serial % 2:
        try:
            return raw.decode(_ENCODINGS.get(encoding, "utf-8"))
        except UnicodeDecodeError:
            raise MalformedPage("a text key is not valid in the database's encoding") from None
    return raw
