"""The streaming tar reader: entries equal tarfile's in every format, malformed input rejected."""

import io
import tarfile

import pytest

from kakoi.errors import ImageError
from kakoi.image.tarstream import BLOCK_SIZE, MAX_EXTENDED_HEADER, TarEntry, TarReader

MTIME = 1_700_000_000
BIG_DATA = bytes(range(256)) * 4100 + b"tail"  # about 1 MiB, so it is read in two chunks


def info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **fields) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.mode = mode
    member.mtime = MTIME
    for key, value in fields.items():
        setattr(member, key, value)
    return member


def sample_members(form: int) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """One member of each type, with long and non-ASCII names where the format allows them."""
    members = [
        (info("usr", tarfile.DIRTYPE, 0o755), None),
        (info("usr/hello.txt", uid=1000, gid=1001, uname="user", gname="group"), b"hello\n"),
        (info("usr/empty"), b""),
        (info("usr/one-block", mode=0o4755), b"b" * 512),
        (info("usr/over-block"), b"c" * 513),
        (info("usr/big"), BIG_DATA),
        (info("usr/" + "a" * 90 + "/" + "b" * 90 + ".txt"), b"split into prefix and name"),
        (info("usr/café-日本.txt"), b"non-ascii"),
        (info("usr/link", tarfile.SYMTYPE, 0o777, linkname="hello.txt"), None),
        (info("usr/hard", tarfile.LNKTYPE, linkname="usr/hello.txt"), None),
        (info("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3), None),
        (info("dev/sda", tarfile.BLKTYPE, 0o660, devmajor=8, devminor=0), None),
        (info("run/fifo", tarfile.FIFOTYPE), None),
        (info("usr/contiguous", tarfile.CONTTYPE), b"contiguous"),
        (info("tmp", tarfile.DIRTYPE, 0o1777), None),
    ]
    if form != tarfile.USTAR_FORMAT:
        very_long = "/".join(["x" * 60] * 5)
        members += [
            (info(very_long + "/file"), b"name over 255 characters"),
            (info(very_long, tarfile.DIRTYPE, 0o755), None),
            (info("usr/long-link", tarfile.SYMTYPE, 0o777, linkname="t" * 150), None),
            (info("usr/long-hard", tarfile.LNKTYPE, linkname=very_long + "/file"), None),
            (info("usr/big-uid", uid=2**40, gid=2**33), b"big ids"),
            (info("usr/old", mtime=-1000), b"before 1970"),
        ]
    if form == tarfile.PAX_FORMAT:
        xattrs = {"SCHILY.xattr.user.comment": "hello", "SCHILY.xattr.user.empty": ""}
        members += [
            (info("usr/fraction", mtime=1_600_000_000.25), b"fractional mtime"),
            (info("usr/xattr", pax_headers=xattrs), b"xattrs"),
        ]
    return members


def write_tar(members, form: int, global_headers: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=form, encoding="utf-8",
                      pax_headers=global_headers) as archive:
        for member, data in members:
            if data is None:
                archive.addfile(member)
            else:
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def read_with_tarfile(data: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    result = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for member in archive:
            content = archive.extractfile(member).read() if member.isreg() else None
            result.append((member, content))
    return result


class ShortReads:
    """A stream whose reads return at most 7 bytes, as a socket or a queue may."""

    def __init__(self, data: bytes):
        self._stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(min(size, 7))


def read_with_reader(stream, reading: str) -> list[tuple[TarEntry, bytes | None]]:
    """Return each entry with its data, or with None when `reading` is "skip"."""
    reader = TarReader(stream, "test-layer")
    result = []
    for entry in reader:
        content = None
        if entry.type in (b"0", b"\0", b"7") and reading != "skip":
            content = reader.read_data()
        result.append((entry, content))
    return result


def assert_same_entry(entry: TarEntry, member: tarfile.TarInfo) -> None:
    assert entry.name == member.name
    assert entry.type == member.type
    assert entry.mode == member.mode
    assert entry.uid == member.uid
    assert entry.gid == member.gid
    assert entry.size == member.size
    assert entry.mtime == pytest.approx(member.mtime, abs=1e-6)
    assert entry.linkname == member.linkname
    assert entry.devmajor == member.devmajor
    assert entry.devminor == member.devminor
    assert entry.pax_headers == member.pax_headers


def header(name: bytes = b"f", kind: bytes = b"0", size: int = 0, *, linkname: bytes = b"",
           magic: bytes = b"ustar\x0000", fields: dict[int, bytes] | None = None,
           checksum: bytes | None = None) -> bytes:
    """Return a 512-byte header with a correct checksum unless `checksum` is given.

    `fields` overwrites raw bytes at the given offsets before the checksum is computed.
    """
    raw = bytearray(BLOCK_SIZE)
    raw[0:len(name)] = name
    raw[100:108] = b"0000644\0"
    raw[108:116] = b"0000000\0"
    raw[116:124] = b"0000000\0"
    raw[124:136] = b"%011o\0" % size
    raw[136:148] = b"%011o\0" % MTIME
    raw[156:157] = kind
    raw[157:157 + len(linkname)] = linkname
    raw[257:265] = magic
    for offset, value in (fields or {}).items():
        raw[offset:offset + len(value)] = value
    raw[148:156] = b" " * 8
    raw[148:156] = checksum if checksum is not None else b"%06o\0 " % sum(raw)
    return bytes(raw)


def pax_header(records: bytes, kind: bytes = b"x", size: int | None = None) -> bytes:
    size = len(records) if size is None else size
    return header(b"././@PaxHeader", kind, size) + records.ljust(-(-len(records) // 512) * 512,
                                                                 b"\0")


def base256(value: int, width: int) -> bytes:
    return (value % (1 << (8 * width - 1)) | 1 << (8 * width - 1)).to_bytes(width, "big")


FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


@pytest.mark.parametrize("reading", ["read", "skip", "short-reads"])
@pytest.mark.parametrize("form", sorted(FORMATS))
def test_reader_matches_tarfile(form, reading):
    data = write_tar(sample_members(FORMATS[form]), FORMATS[form])
    stream = ShortReads(data) if reading == "short-reads" else io.BytesIO(data)

    expected = read_with_tarfile(data)
    entries = read_with_reader(stream, reading)

    assert [entry.name for entry, _ in entries] == [member.name for member, _ in expected]
    for (entry, content), (member, expected_content) in zip(entries, expected):
        assert_same_entry(entry, member)
        if reading != "skip":
            assert content == expected_content, entry.name


def test_reader_exact_times_and_ids():
    data = write_tar(sample_members(tarfile.PAX_FORMAT), tarfile.PAX_FORMAT)

    entries = {entry.name: entry for entry, _ in read_with_reader(io.BytesIO(data), "skip")}

    assert entries["usr/fraction"].mtime_ns == 1_600_000_000_250_000_000
    assert entries["usr/old"].mtime_ns == -1000 * 10**9
    assert entries["usr/big-uid"].uid == 2**40
    assert entries["usr/xattr"].pax_headers["SCHILY.xattr.user.comment"] == "hello"


def test_reader_gnu_base256_fields():
    member = info("big", uid=2**40, gid=7, mtime=-5)
    data = write_tar([(member, b"x")], tarfile.GNU_FORMAT)
    assert data[108] == 0x80  # the uid field is base-256
    assert data[136] == 0xFF  # the negative mtime is base-256

    [(entry, _)] = read_with_reader(io.BytesIO(data), "read")

    assert entry.uid == 2**40
    assert entry.mtime_ns == -5 * 10**9


def test_reader_global_pax_headers_apply_to_later_entries():
    members = [(info("a"), b"1"), (info("b"), b"2")]
    global_headers = {"comment": "from git", "uid": "42"}
    data = write_tar(members, tarfile.PAX_FORMAT, global_headers=global_headers)

    entries = read_with_reader(io.BytesIO(data), "read")
    expected = read_with_tarfile(data)

    for (entry, _), (member, _) in zip(entries, expected):
        assert_same_entry(entry, member)
        assert entry.uid == 42
        assert entry.pax_headers["comment"] == "from git"


@pytest.mark.parametrize("form", sorted(FORMATS))
def test_reader_undecodable_name_round_trips(form):
    name = b"caf\xe9-latin1".decode("utf-8", "surrogateescape")
    data = write_tar([(info(name), b"x")], FORMATS[form])

    [(entry, _)] = read_with_reader(io.BytesIO(data), "read")
    [(member, _)] = read_with_tarfile(data)

    assert entry.name == member.name
    assert entry.name.encode("utf-8", "surrogateescape") == b"caf\xe9-latin1"


def test_reader_stops_just_after_end_blocks():
    data = write_tar([(info("a"), b"x" * 700)], tarfile.GNU_FORMAT)
    end = 512 + 1024  # one header, 700 bytes padded to 1024
    assert data[end:] == bytes(len(data) - end)  # tarfile pads the archive to 10240 bytes
    stream = io.BytesIO(data)

    entries = list(TarReader(stream, "test-layer"))

    assert len(entries) == 1
    assert stream.tell() == end + 2 * BLOCK_SIZE


@pytest.mark.parametrize("tail", [BLOCK_SIZE, 0], ids=["one-zero-block", "no-zero-block"])
def test_reader_accepts_short_end_of_archive(tail):
    data = write_tar([(info("a"), b"x"), (info("b"), b"y")], tarfile.GNU_FORMAT)
    end = 4 * BLOCK_SIZE

    entries = read_with_reader(io.BytesIO(data[:end + tail]), "read")

    assert [(entry.name, content) for entry, content in entries] == [("a", b"x"), ("b", b"y")]


def test_reader_partial_data_read_then_next():
    data = write_tar([(info("big"), BIG_DATA), (info("after"), b"after")], tarfile.GNU_FORMAT)
    reader = TarReader(io.BytesIO(data), "test-layer")

    big = next(reader)
    first = bytes(reader.read_chunk())
    after = next(reader)

    assert big.name == "big"
    assert first == BIG_DATA[:len(first)]
    assert 0 < len(first) < len(BIG_DATA)
    assert after.name == "after"
    assert reader.read_data() == b"after"
    assert reader.read_data() == b""


def test_reader_v7_directory_with_trailing_slash():
    data = header(b"olddir/", kind=b"\0", magic=b"\0" * 8) + header(b"olddir/f", kind=b"\0")

    entries = list(TarReader(io.BytesIO(data + bytes(1024)), "test-layer"))
    members = [member for member, _ in read_with_tarfile(data + bytes(1024))]

    expected = [("olddir", b"5"), ("olddir/f", b"\0")]
    assert [(entry.name, entry.type) for entry in entries] == expected
    assert [(member.name, member.type) for member in members] == expected


def test_reader_accepts_signed_checksum():
    raw = bytearray(header("é".encode()))
    signed = sum(byte - 256 if byte >= 128 else byte for byte in raw[:148] + raw[156:]) + 256
    raw[148:156] = b"%06o\0 " % signed

    [entry] = list(TarReader(io.BytesIO(bytes(raw) + bytes(1024)), "test-layer"))

    assert entry.name == "é"


def test_reader_header_only_types_have_no_data():
    # A hardlink may carry its target's size, but tarfile and Go's archive/tar read no data.
    data = header(b"a", size=3) + b"abc".ljust(512, b"\0") + header(b"h", kind=b"1", size=3,
                                                                    linkname=b"a")
    entries = list(TarReader(io.BytesIO(data + header(b"z") + bytes(1024)), "test-layer"))

    assert [(entry.name, entry.size) for entry in entries] == [("a", 3), ("h", 3), ("z", 0)]


# Malformed archives, built from raw headers.

END = bytes(1024)
FILE = header(b"ok", size=2) + b"ok".ljust(512, b"\0")

# (archive, expected message part, whether tarfile also rejects it)
MALFORMED = {
    "empty stream": (b"", "the archive is empty", True),
    "bad checksum": (header(checksum=b"0000001\0") + END, "bad checksum", True),
    "checksum not a number": (header(checksum=b"zzzzzz\0 ") + END, "bad checksum", True),
    # tarfile ends the archive quietly at an invalid header after the first one.
    "bad checksum after an entry": (FILE + header(b"g", checksum=b"0000001\0") + END,
                                    "header at byte 1024 has a bad checksum", False),
    "truncated header": (FILE + header(b"g")[:300], "header at byte 1024 is truncated", False),
    "truncated data": (header(b"d", size=2000) + b"x" * 1000, "the data of entry 'd' is truncated",
                       True),
    "truncated padding": (header(b"d", size=10) + b"x" * 10, "the data of entry 'd' is truncated",
                          True),
    "garbage numeric field": (header(fields={124: b"12x45678901\0"}) + END,
                              "numeric field that is neither octal nor base-256", True),
    "signed octal uid": (header(fields={108: b"-000001\0"}) + END, "negative size, uid", False),
    "negative size": (header(fields={124: base256(-1, 12)}) + END, "negative size", False),
    "huge size": (header(fields={124: base256(2**80, 12)}) + b"x" * 5000,
                  "the data of entry 'f' is truncated", True),
    # The reader stops at the size field; tarfile fails later, on the missing data.
    "oversized pax header": (header(b"././@PaxHeader", b"x", MAX_EXTENDED_HEADER + 1),
                             "more than the limit of 1048576 bytes", True),
    "oversized long name": (header(b"././@LongLink", b"L", MAX_EXTENDED_HEADER + 1),
                            "more than the limit of 1048576 bytes", True),
    "pax length too long": (pax_header(b"30 path=abc\n") + FILE + END,
                            "record whose length 30 is wrong", True),
    "pax length too short": (pax_header(b"5 path=abc\n") + FILE + END,
                             "record whose length 5 is wrong", True),
    "pax length zero": (pax_header(b"0 path=abc\n") + FILE + END,
                        "record whose length 0 is wrong", True),
    "pax length ends at the space": (pax_header(b"2 path=abc\n") + FILE + END,
                                     "record whose length 2 is wrong", True),
    "pax length past the data": (pax_header(b"99999 path=abc\n") + FILE + END,
                                 "record whose length 99999 is wrong", True),
    "pax length missing": (pax_header(b"path=abc\n") + FILE + END,
                           "record without a valid length", True),
    "pax record without equals": (pax_header(b"9 pathab\n") + FILE + END,
                                  "record without key=value", True),
    "pax size not a number": (pax_header(b"12 size=1x3\n") + FILE + END,
                              "invalid pax size value '1x3'", False),
    "pax mtime not a number": (pax_header(b"15 mtime=1.2.3\n") + FILE + END,
                               "invalid pax mtime value '1.2.3'", False),
    "extension header at the end": (pax_header(b"12 path=abc\n"),
                                    "ends after an extension header", True),
    "zero block then data": (FILE + bytes(512) + FILE, "followed by data instead of a second",
                             False),
    "gnu sparse entry": (header(b"holes", b"S", 100) + END,
                         "entry 'holes' is a sparse file", False),
    "pax sparse entry": (pax_header(b"22 GNU.sparse.major=1\n") + FILE + END,
                         "entry 'ok' is a sparse file", False),
}


def tarfile_rejects(data: bytes) -> bool:
    try:
        read_with_tarfile(data)
    # tarfile raises OverflowError for a size beyond what a seek can take.
    except (tarfile.TarError, ValueError, EOFError, OverflowError):
        return True
    return False


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_reader_rejects_malformed(case):
    data, message, tarfile_also = MALFORMED[case]

    with pytest.raises(ImageError, match="layer tar test-layer: ") as raised:
        read_with_reader(io.BytesIO(data), "read")

    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert tarfile_rejects(data) == tarfile_also


def test_reader_rejects_malformed_when_skipping_data():
    data = header(b"d", size=2000) + b"x" * 1000

    with pytest.raises(ImageError, match="the data of entry 'd' is truncated"):
        read_with_reader(io.BytesIO(data), "skip")


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + len(str(len(body)))
    length = len(body) + len(str(length))
    return b"%d" % length + body


def test_pax_record_helper_counts_its_own_length():
    assert pax_record(b"path", b"abc") == b"12 path=abc\n"
    record = pax_record(b"k", b"v" * 95)  # 99 bytes without the length, which then has 3 digits
    assert record.startswith(b"102 ")
    assert len(record) == 102


def test_reader_limits_global_pax_headers():
    record = pax_record(b"comment", b"v" * (MAX_EXTENDED_HEADER - 100))
    data = pax_header(record, b"g") + pax_header(record, b"g") + FILE + END

    with pytest.raises(ImageError, match="global pax headers total"):
        read_with_reader(io.BytesIO(data), "read")


def test_reader_pax_empty_value_keeps_header_field():
    data = pax_header(b"15 path=global\n", b"g") + pax_header(b"8 path=\n") + FILE + END

    [(entry, content)] = read_with_reader(io.BytesIO(data), "read")

    assert entry.name == "ok"
    assert content == b"ok"


def header_offsets(data: bytes) -> list[int]:
    """Return the offsets of the blocks whose checksum is valid: the headers."""
    offsets = []
    for offset in range(0, len(data), BLOCK_SIZE):
        block = bytearray(data[offset:offset + BLOCK_SIZE])
        try:
            stored = int(bytes(block[148:156]).strip(b" \0"), 8)
        except ValueError:
            continue
        block[148:156] = b" " * 8
        if any(block) and sum(block) == stored:
            offsets.append(offset)
    return offsets


def test_reader_mutated_headers_raise_only_image_error():
    """Headers with random fields and a fixed-up checksum either parse or raise ImageError."""
    import random

    rng = random.Random(7)
    bases = []
    for form in FORMATS.values():
        members = [(member, data) for member, data in sample_members(form)
                   if data is None or len(data) < 5000]
        data = write_tar(members, form)
        bases.append((data, header_offsets(data)))
    fields = [(100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (329, 8), (337, 8)]

    for _ in range(300):
        base, offsets = rng.choice(bases)
        data = bytearray(base)
        offset = rng.choice(offsets)
        start, width = rng.choice(fields)
        data[offset + start:offset + start + width] = rng.choice([
            b"\x80" + rng.randbytes(width - 1), b"\xff" + rng.randbytes(width - 1),
            rng.randbytes(width), b" " * width])
        data[offset + 156] = rng.choice(b"0123456\0xgLKSV")
        data[offset + 148:offset + 156] = b" " * 8
        data[offset + 148:offset + 156] = b"%06o\0 " % sum(data[offset:offset + BLOCK_SIZE])
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]

        for reading in ("read", "skip"):
            try:
                read_with_reader(io.BytesIO(bytes(data)), reading)
            except ImageError as error:
                assert "\n" not in str(error)
