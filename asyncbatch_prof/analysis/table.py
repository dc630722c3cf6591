"""Named numpy columns of equal length: the analysis's tables, kept free of pandas.

Importing pandas costs about 0.3 s, a sixth of ``abprof analyze`` on a 148 MB trace, and only the
HTML report wants DataFrames. ``Table.frame()`` builds one when asked (importing
pandas then), and :class:`FrameAttribute` turns a table of an object into a DataFrame attribute built
on first access, so ``abprof analyze`` never imports pandas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Table:
    """Columns by name, in order; every column a 1-D numpy array of the same length."""

    columns: dict[str, np.ndarray]

    @classmethod
    def empty(cls, names: Sequence[str]) -> Table:
        """No rows; object columns, as ``pd.DataFrame(columns=names)`` has."""
        return cls({name: np.empty(0, dtype=object) for name in names})

    @classmethod
    def concat(cls, parts: Sequence[Table], names: Sequence[str]) -> Table:
        """The rows of ``parts`` one after the other (``names`` give the columns when there is no part)."""
        if not parts:
            return cls.empty(names)
        return cls({name: np.concatenate([p.columns[name] for p in parts]) for name in parts[0].columns})

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def take(self, rows: np.ndarray) -> Table:
        """The rows selected by an index or boolean array, in its order."""
        return Table({name: values[rows] for name, values in self.columns.items()})

    def records(self) -> list[dict[str, Any]]:
        """One dict of plain Python values per row (what JSON takes)."""
        names = list(self.columns)
        return [dict(zip(names, row)) for row in zip(*(v.tolist() for v in self.columns.values()))]

    def frame(self) -> pd.DataFrame:
        """The table as a pandas DataFrame (imports pandas)."""
        import pandas as pd

        return pd.DataFrame(self.columns)


class FrameAttribute:
    """``obj.<name>``: ``obj.tables[<name>]`` as a DataFrame, built on first access and then kept in the
    instance (a non-data descriptor: the stored frame shadows it), so pandas is imported only by code
    that reads the attribute."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        frame = obj.tables[self.name].frame()
        obj.__dict__[self.name] = frame
        return frame
