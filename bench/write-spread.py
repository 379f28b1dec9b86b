#!/usr/bin/env python3
"""write-spread.py FILE TOTAL PIECE ROUND: change TOTAL bytes of FILE.

Overwrites TOTAL bytes of FILE with fresh random data in PIECE-byte writes
spread evenly over the file (one write per stride of size/count bytes, at a
place in its stride shifted by ROUND, so each round changes other places),
then fsyncs the file and prints the bytes written. With TOTAL equal to the
file size it rewrites the whole file. The file's size does not change.
"""
import os
import sys


def main() -> None:
    path = sys.argv[1]
    total, piece, rnd = (int(a) for a in sys.argv[2:5])
    size = os.stat(path).st_size
    count = total // piece
    stride = size // count // piece * piece
    if count < 1 or stride < piece:
        sys.exit(f"write-spread: {total} bytes in {piece}-byte pieces do not fit in {size}")
    slots = stride // piece
    shift = (rnd * 7919 % slots) * piece
    fd = os.open(path, os.O_WRONLY)
    written = 0
    for i in range(count):
        data = memoryview(os.urandom(piece))
        at = i * stride + shift
        while data:
            n = os.pwrite(fd, data, at)
            data, at, written = data[n:], at + n, written + n
    os.fsync(fd)
    os.close(fd)
    print(written)


if __name__ == "__main__":
    main()
