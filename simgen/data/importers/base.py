"""What every importer shares and the COCO panoptic reader needs too (kept apart so neither imports the
other)."""

from __future__ import annotations

from collections.abc import Sequence


class DatasetImportError(ValueError):
    """Bad importer input; the message names the file(s). ``problems`` lists every finding."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        self.problems = list(problems)
        shown = self.problems[:50]
        more = (
            f"\n  ... and {len(self.problems) - len(shown)} more" if len(self.problems) > len(shown) else ""
        )
        super().__init__(message + "".join(f"\n  - {p}" for p in shown) + more)


def same_aspect(a: tuple[int, int], b: tuple[int, int], tol: float = 0.01) -> bool:
    return abs(a[0] / a[1] - b[0] / b[1]) <= tol * (b[0] / b[1])
