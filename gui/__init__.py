"""The nbtoolkit desktop viewer (PyQt6 + pyqtgraph): watch a dt predictor train live.

Launch with ``nbtoolkit gui`` or ``python -m gui``; see :mod:`gui.app`. Importing this package
does not import Qt, so :func:`gui.app.display_available` works anywhere.
"""

from __future__ import annotations
