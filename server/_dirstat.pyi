"""Directory listing and stat loops in C (server/_dirstat.c), with the GIL released for a whole batch."""

from array import array

def list_dir(dir_fd: int, /) -> tuple[list[str], bytes, bytes]:
    """(names, inode numbers as native uint64 bytes, kinds: b'd' directory, b'l' symlink, b'f' other)."""

def stat_names(dir_fd: int, names: list[str], follow: bytes, key_all: bool, /) -> tuple[bytes, bytes, list[str | None]]:
    """(sizes as native int64 bytes, -1: not measured; (dev, ino) keys as native uint64 pairs; the link text
    of each followed name, None where unreadable)."""

def diff_dir(dir_fd: int, known_names: bytes, known_inos: bytes, /) -> tuple[list[str], bytes, list[str], bytes, bytes]:
    """(subdirs, per known file its kind if still there as the same inode else 0, then the other files: names,
    inode numbers as native uint64 bytes, kinds)."""

def probe_names(dir_fd: int, known_names: bytes, known_inos: bytes, names: list[str], /) -> tuple[bytes, bytes, bytes]:
    """Without listing: per name, its index among the known files or -1 (native int64 bytes), the inode under
    it now or 0 (native uint64 bytes), and its kind now (b'd', b'l', b'f'; 0: nothing there)."""

def fs_magic(fd: int, /) -> int:
    """statfs's f_type of the file system an open file is on."""

def tally(sizes: bytes | array[int], keys: bytes | array[int] | None, /) -> tuple[int, int, int, int]:
    """(how many sizes are -1, bytes of the files counted by themselves, bytes of the keyed ones with each
    (dev, ino) once, how many distinct (dev, ino))."""
