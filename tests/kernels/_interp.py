"""Make Triton's interpreter usable for these kernels on the CPU.

Must be imported before ``triton``. Sets ``TRITON_INTERPRET=1`` where there is no CUDA device, and
works around Triton 3.6's interpreter converting a loaded scalar (a 1-element numpy array) to a
Python int with ``int(array)``, which numpy >= 2.4 refuses: a ``range()`` whose bounds come from
memory (as the kernels' loops do) then fails in the interpreter only.
"""

from __future__ import annotations

import os

import torch

INTERPRET = not torch.cuda.is_available()
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"


def patch_interpreter() -> None:
    import numpy as np
    from triton.runtime import interpreter

    if getattr(interpreter, "_abprof_patched", False):
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    interpreter._abprof_patched = True
