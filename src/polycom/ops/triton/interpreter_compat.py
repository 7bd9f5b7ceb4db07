"""Triton CPU interpreter with NumPy >= 2.4: loops with run-time bounds.

The interpreter holds every scalar as a 1-element NumPy array and, up to Triton 3.6, converts it to a
Python int for ``range`` / ``tl.range`` bounds with ``int(array)``. NumPy 2.4 removed that conversion
for arrays with ndim > 0 ("only 0-dimensional arrays can be converted to Python scalars"), so every
kernel loop whose bounds are kernel arguments (the persistent loops, the partials reduction) fails in
the interpreter of Triton <= 3.6 with NumPy >= 2.4 (fixed upstream in triton-lang/triton by converting
``array.squeeze()``; the Triton 3.9 interpreter already does). `apply()` installs the same
conversion on older interpreters; it changes nothing when the installed interpreter already squeezes
or NumPy still converts 1-element arrays. Only used when kernels run through the interpreter.
"""

from __future__ import annotations

import inspect

import numpy as np


def _numpy_converts_1d() -> bool:
    try:
        int(np.array([1]))
    except TypeError:
        return False
    return True


def apply() -> bool:
    """Patch the interpreter's tensor ``__index__`` if needed; True when a patch was installed."""
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_polycom_squeezed", False) or _numpy_converts_1d():
        return False
    try:
        if "squeeze" in inspect.getsource(original):
            return False
    except (OSError, TypeError):
        pass

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patch_lang_tensor._polycom_squeezed = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
