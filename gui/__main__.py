"""``python -m gui``: open the nbtoolkit viewer."""

from __future__ import annotations

from .app import main

raise SystemExit(main())
