"""Differences between the transformers releases chatsae supports (``transformers>=4.46``)."""

from __future__ import annotations

import transformers
from packaging.version import Version

DTYPE_KW = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
"""The ``from_pretrained`` keyword for the dtype: ``dtype=`` replaced ``torch_dtype=`` in transformers 4.56."""
