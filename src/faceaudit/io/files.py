"""Opening input files that nobody vouched for: regular files only, never blocking, reads bounded.

Every path faceaudit reads comes from a manifest, a config or the command line, so it can name
anything: ``/dev/zero`` (bytes without end), a FIFO (``open`` waits for a writer that never comes), a
socket, or a table built to exhaust memory (a million columns, or one line of a gigabyte, which pandas
and pyarrow hold many times over while parsing). Every input file goes through this module, so the
checks live in one place:

- The path is ``stat``-ed first and must be a regular file: devices, FIFOs and sockets are never
  opened (opening some devices has side effects), and the error says what the path is.
- It is then opened with ``O_NONBLOCK`` (a path swapped for a FIFO after the ``stat`` cannot block
  the open) and checked again with ``fstat`` on the descriptor, which is what is actually read.
- Reads are bounded: a cap on the size where a file is read whole (an image, a config), and for
  tables a cap on line length and on the number of columns, checked before pandas or pyarrow parse.

A refusal is a :class:`FileRefused` (an :class:`~faceaudit.errors.InputError`) whose ``reason`` is one
of the image failure reasons, so :mod:`faceaudit.io.images` reports it per image.
"""

from __future__ import annotations

import csv
import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from faceaudit.errors import InputError

#: Longest line (bytes) of a CSV or text input: far above any manifest, label or pair line, far below
#: what would exhaust memory (a 1 GB line costs pandas several GB).
MAX_LINE_BYTES = 1 << 20
#: Most columns of a table input (a manifest has path, subject_id and a few labels).
MAX_COLUMNS = 1000
#: Largest Parquet footer (the schema and row-group metadata, parsed whole by pyarrow).
MAX_PARQUET_FOOTER_BYTES = 64 << 20

_BLOCK = 1 << 20
_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
          | getattr(os, "O_BINARY", 0))


class FileRefused(InputError):
    """An input file that is not read: ``reason`` is ``missing_file``, ``unreadable_file``,
    ``not_a_regular_file`` or ``too_large``; ``detail`` is the message without the path."""

    def __init__(self, reason: str, detail: str, path: str | Path) -> None:
        self.reason = reason
        self.detail = detail
        self.path = str(path)
        super().__init__(f"{path}: {detail}")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check(st: os.stat_result, path: str | Path, what: str, max_bytes: int | None) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise FileRefused("unreadable_file", f"is a folder, not {what}", path)
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused("not_a_regular_file", f"is {_kind(st.st_mode)}, not a regular file ({what} must be one: "
                          "copy the data into a file)", path)
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileRefused("too_large", f"the file is {st.st_size:,} bytes, over the limit of {max_bytes:,} for "
                          f"{what}; is this the right file?", path)


def open_regular(path: str | Path, *, what: str = "a file", max_bytes: int | None = None) -> BinaryIO:
    """Open ``path`` for reading in binary if it is a regular file (at most ``max_bytes``); see the module
    docstring. ``what`` names the file in errors ("an image file"). The caller closes the file."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise FileRefused("missing_file", "file not found; check the path", path) from None
    except OSError as exc:
        raise FileRefused("unreadable_file", f"cannot read the file ({exc.strerror})", path) from None
    _check(st, path, what, max_bytes)  # before open: a device or FIFO is never opened
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise FileRefused("missing_file", "file not found; check the path", path) from None
    except OSError as exc:
        raise FileRefused("unreadable_file", f"cannot read the file ({exc.strerror})", path) from None
    try:
        _check(os.fstat(fd), path, what, max_bytes)  # what was opened, in case the path changed since the stat
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, *, max_bytes: int, what: str = "a file") -> bytes:
    """The whole content of a regular file of at most ``max_bytes`` bytes."""
    with open_regular(path, what=what, max_bytes=max_bytes) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise FileRefused("unreadable_file", f"cannot read the file ({exc.strerror})", path) from None
    if len(data) > max_bytes:  # it grew after the size check
        raise FileRefused("too_large", f"the file is over the limit of {max_bytes:,} bytes for {what}", path)
    return data


def check_lines(f: BinaryIO, path: str | Path, what: str, *, first_only: bool = False,
                max_line_bytes: int = MAX_LINE_BYTES) -> bytes:
    """Refuse a text file with a line longer than ``max_line_bytes`` (only the first line with ``first_only``),
    reading one block at a time; returns the first line. Leaves ``f`` at its start.

    CR counts as a line end as well as LF: pandas ends lines at either.
    """
    return _scan_lines(f, path, what, first_only, max_line_bytes)[0]


def _scan_lines(f: BinaryIO, path: str | Path, what: str, first_only: bool,
                max_line_bytes: int) -> tuple[bytes, bool]:
    """:func:`check_lines`, and whether the part read holds a double quote (a CSV may then have quoted cells
    running over several lines)."""
    first: bytes | None = None
    head = b""  # the first line's bytes until it ends
    current = 0  # length so far of the line that runs on from the previous block
    line_no = 1  # number of that line
    quoted = False
    while True:
        block = f.read(_BLOCK)
        if not block:
            break
        quoted = quoted or b'"' in block
        segments = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        if first is None:
            head += segments[0][:max_line_bytes + 1 - len(head)]
            if len(segments) > 1:
                first = head
        # every segment but the last ends at a line break; the last runs on into the next block
        lengths = [current + len(segments[0]), *map(len, segments[1:])]
        checked = lengths[:1] if first_only else lengths
        longest = max(range(len(checked)), key=checked.__getitem__)
        if checked[longest] > max_line_bytes:
            raise InputError(f"{path}: line {line_no + longest} is longer than {max_line_bytes:,} bytes, the limit "
                             f"for {what}; is this the right file (text, one record per line)?")
        line_no += len(segments) - 1
        current = lengths[-1]
        if first_only and first is not None:
            break
    f.seek(0)
    return (head if first is None else first), quoted


def _check_records(f: BinaryIO, path: str | Path, what: str, max_bytes: int) -> None:
    """Refuse a CSV with a record longer than about ``max_bytes``, line breaks in quoted cells included (a
    cell of a gigabyte can be spread over short lines). pyarrow's quote-aware reader walks the file keeping
    nothing; its block bounds a record. Other parse problems are left for the real reader to report."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        for _ in pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=max_bytes, use_threads=False),
                                parse_options=pacsv.ParseOptions(newlines_in_values=True,
                                                                 invalid_row_handler=lambda row: "skip")):
            pass
    except pa.ArrowInvalid as exc:
        if "straddl" in str(exc):  # pyarrow's word for a record longer than its block
            raise InputError(f"{path}: a record (with the line breaks inside its quoted cells) is longer than "
                             f"{max_bytes:,} bytes, the limit for {what}; is this the right file?") from None
    finally:
        f.seek(0)


def _check_columns(n: int, path: str | Path, what: str) -> None:
    if n > MAX_COLUMNS:
        raise InputError(f"{path}: {n:,} columns, over the limit of {MAX_COLUMNS:,} for {what}; a table input needs "
                         "only its named columns (e.g. path, subject_id and the labels): drop the others")


def check_csv(f: BinaryIO, path: str | Path, what: str, *, header_only: bool = False) -> list[str]:
    """Bounded checks of a CSV before it is parsed: line length (every line, or the header only) and the
    number of columns in the header. Returns the header's column names; leaves ``f`` at its start."""
    first, quoted = _scan_lines(f, path, what, header_only, MAX_LINE_BYTES)
    columns = next(csv.reader([first.decode("utf-8-sig", errors="replace")]), [])
    _check_columns(len(columns), path, what)
    if quoted and not header_only:
        _check_records(f, path, what, MAX_LINE_BYTES)
    return columns


def check_parquet(f: BinaryIO, path: str | Path, what: str) -> None:
    """Bounded checks of a Parquet file before pyarrow reads it: the footer size and the number of columns.
    Leaves ``f`` at its start."""
    import pyarrow.parquet as pq

    size = f.seek(0, io.SEEK_END)
    if size < 12:
        raise InputError(f"{path}: not a Parquet file ({size} bytes); give {what} as .csv or .parquet")
    f.seek(size - 8)
    tail = f.read(8)
    if tail[4:] != b"PAR1":
        raise InputError(f"{path}: not a Parquet file (no PAR1 footer); give {what} as .csv or .parquet")
    footer = int.from_bytes(tail[:4], "little")
    if footer > MAX_PARQUET_FOOTER_BYTES:
        raise InputError(f"{path}: Parquet metadata of {footer:,} bytes, over the limit of "
                         f"{MAX_PARQUET_FOOTER_BYTES:,} for {what}; is this the right file?")
    f.seek(0)
    try:
        columns = pq.ParquetFile(f).metadata.num_columns
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others on a damaged footer
        raise InputError(f"{path}: cannot read {what} as Parquet ({exc})") from exc
    _check_columns(columns, path, what)
    f.seek(0)


def table_format(path: str | Path) -> str:
    """``parquet`` for ``.parquet``/``.pq``, ``csv`` for ``.csv``, else ``text``."""
    suffix = Path(path).suffix.lower()
    return "parquet" if suffix in (".parquet", ".pq") else "csv" if suffix == ".csv" else "text"


def open_table(path: str | Path, what: str, *, header_only: bool = False, fmt: str | None = None) -> BinaryIO:
    """Open a table input after the bounded checks, at its start; ``fmt`` (``csv``, ``parquet``, ``text``:
    lines) defaults to :func:`table_format`.

    ``header_only``: check only the first line (for a file whose rows are read in bounded chunks later, or
    not at all).
    """
    fmt = fmt or table_format(path)
    f = open_regular(path, what=what)
    try:
        if fmt == "csv":
            check_csv(f, path, what, header_only=header_only)
        elif fmt == "parquet":
            check_parquet(f, path, what)
        else:
            check_lines(f, path, what, first_only=header_only)
        return f
    except BaseException:
        f.close()
        raise


def read_text(path: str | Path, what: str) -> str:
    """A whole text file (UTF-8) whose every line is within :data:`MAX_LINE_BYTES`."""
    with open_table(path, what) as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc}); {what} must be plain text") from exc
