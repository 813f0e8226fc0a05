"""Read a pickle that holds only plain data, without letting it run code.

``pickle.load`` calls whatever global a file names, so a crafted file runs code on load. :func:`read_plain_pickle`
admits plain containers and numbers (dict, list, tuple, set, str, bytes, int, float, complex, bool, None: these need
no global) and numpy *numbers*, the two globals numpy writes for a scalar: ``numpy.dtype`` (numeric kinds only) and
``numpy.core.multiarray.scalar`` (``numpy._core.multiarray.scalar`` from numpy 2). Numpy scalars come back as Python
numbers. Any other global is refused with a one-line error naming it.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError

#: Kinds of numpy dtype a scalar may have: bool, signed, unsigned, float, complex.
NUMERIC_KINDS = "biufc"


class PickleFileError(UsageError):
    """A pickle that is missing, truncated, corrupt, or names a global that is not plain data."""


def _numeric_dtype(spec: object, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype`` as a pickle calls it, for numeric dtype codes only ('f8', 'i4', ...)."""
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"numpy.dtype({spec!r}) is not a numeric dtype code")
    dtype = np.dtype(spec, align, copy)
    if dtype.kind not in NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"numpy.dtype({spec!r}) is not numeric")
    return dtype


def _numeric_scalar(dtype: object, data: object = None) -> bool | int | float | complex:
    """``numpy.core.multiarray.scalar`` as a pickle calls it: a number from its raw bytes, as a Python number."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r} is not a number")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype} needs {dtype.itemsize} bytes")
    return np.frombuffer(data, dtype=dtype)[0].item()


#: The only globals a plain-data pickle may name (module, name) -> what is called in their place.
ADMITTED = {
    ("numpy", "dtype"): _numeric_dtype,
    ("numpy.core.multiarray", "scalar"): _numeric_scalar,
    ("numpy._core.multiarray", "scalar"): _numeric_scalar,
}


class PlainUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in :data:`ADMITTED`; every other global is an error."""

    def find_class(self, module: str, name: str) -> Any:
        """The guarded stand-in of an admitted global; refuse any other before it is imported."""
        admitted = ADMITTED.get((module, name))
        if admitted is None:
            raise pickle.UnpicklingError(f"it names the global {module}.{name}, which is not plain data")
        return admitted

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids: they would hand objects from outside the file."""
        raise pickle.UnpicklingError(f"it holds a persistent id {pid!r}, which is not plain data")


def loads_plain(data: bytes) -> Any:
    """The plain data a pickle's bytes hold; ``pickle.UnpicklingError`` (or ``EOFError``, ...) when they are not."""
    return PlainUnpickler(io.BytesIO(data)).load()


def read_plain_pickle(path: str | Path, fix: str = "replace the file with a good copy") -> Any:
    """The plain data in the pickle at ``path``; a one-line :class:`PickleFileError` naming the path and ``fix``
    when it is missing, unreadable, truncated, corrupt, or names a global that is not plain data."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PickleFileError(f"{path} does not exist; {fix}") from None
    except OSError as e:
        raise PickleFileError(f"cannot read {path}: {e.strerror}; {fix}") from None
    try:
        return loads_plain(data)
    except pickle.UnpicklingError as e:
        raise PickleFileError(f"refused to load {path}: {e}; {fix}") from None
    except EOFError:
        raise PickleFileError(f"{path} is truncated ({len(data)} bytes); {fix}") from None
    except Exception as e:  # a corrupt stream fails in many ways: bad opcodes, bad memo indices, wrong types
        reason = " ".join(str(e).split())
        raise PickleFileError(f"{path} is not a readable pickle ({type(e).__name__}: {reason}); {fix}") from None
