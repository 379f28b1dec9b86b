#!/usr/bin/env python3
"""read-data.py FILE: read only the data regions of FILE and print the byte count.

Walks the file with lseek(SEEK_DATA) / lseek(SEEK_HOLE) and reads each data
region 1 MiB at a time, throwing the bytes away. It is the fair "read limit"
for a sparse disk image: cat also reads the holes, as zeros. On a file system
without SEEK_DATA support the whole file counts as one data region.
"""
import errno
import os
import sys


def main() -> None:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    size = os.fstat(fd).st_size
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    f = os.fdopen(fd, "rb", buffering=0)
    off = total = 0
    while off < size:
        try:
            data = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after off
                break
            raise
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        f.seek(data)
        pos = data
        while pos < hole:
            n = f.readinto(view[: min(len(buf), hole - pos)])
            if not n:
                break
            pos += n
            total += n
        off = hole
    print(total)


if __name__ == "__main__":
    main()
