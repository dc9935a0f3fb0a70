"""The list files of Oxford-IIIT Pet: `list.txt`, `trainval.txt`, `test.txt`.

Each row is `Image CLASS-ID SPECIES BREED-ID` (`#` comments); an id may be named
by several files, and its rows must then agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LIST_FILES: dict[str, str] = {"list": "list.txt", "trainval": "trainval.txt", "test": "test.txt"}


@dataclass(frozen=True)
class ListEntry:
    """One id's row in the list files, and which of them name it."""

    class_id: int
    species: int
    breed_id: int
    lists: frozenset[str]


def read_lists(annotations_dir: str | Path) -> dict[str, ListEntry]:
    """Parse list.txt, trainval.txt and test.txt (`Image CLASS-ID SPECIES BREED-ID`, `#` comments).

    Files that are absent are skipped; at least one must exist. An id whose
    rows disagree between files is an error.
    """
    annotations_dir = find_subdir(Path(annotations_dir), "annotations")
    rows: dict[str, tuple[int, int, int]] = {}
    lists: dict[str, set[str]] = {}
    source: dict[str, str] = {}
    present = [(name, annotations_dir / fname) for name, fname in LIST_FILES.items()]
    present = [(name, p) for name, p in present if p.is_file()]
    if not present:
        raise FileNotFoundError(
            f"no list file in {annotations_dir}: expected one of {', '.join(LIST_FILES.values())}"
        )
    for name, path in present:
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            image_id, row = _parse_row(line, f"{path}:{lineno}")
            if image_id in rows and rows[image_id] != row:
                raise ValueError(
                    f"{path}:{lineno}: {image_id} has CLASS-ID/SPECIES/BREED-ID {row}, "
                    f"but {source[image_id]} says {rows[image_id]}"
                )
            rows.setdefault(image_id, row)
            source.setdefault(image_id, f"{path.name}:{lineno}")
            lists.setdefault(image_id, set()).add(name)
    return {i: ListEntry(*rows[i], lists=frozenset(lists[i])) for i in sorted(rows)}


def _parse_row(line: str, where: str) -> tuple[str, tuple[int, int, int]]:
    parts = line.split()
    try:
        if len(parts) < 4:
            raise ValueError
        class_id, species, breed_id = (int(p) for p in parts[1:4])
    except ValueError:
        raise ValueError(f"{where}: expected 'Image CLASS-ID SPECIES BREED-ID', got {line!r}") from None
    if not (1 <= class_id <= 37 and species in (1, 2) and breed_id >= 1):
        raise ValueError(f"{where}: expected CLASS-ID 1..37, SPECIES 1|2, BREED-ID >= 1, got {line!r}")
    return parts[0], (class_id, species, breed_id)


def find_subdir(path: Path, name: str) -> Path:
    """Accept either `<root>/<name>` itself or its parent `<root>`."""
    if not path.is_dir():
        raise FileNotFoundError(f"{name} directory not found: {path}")
    return path / name if path.name != name and (path / name).is_dir() else path
