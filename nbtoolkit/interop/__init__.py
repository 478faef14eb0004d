"""Bridges to other N-body codes. Each lives in its own module and imports its code only when used
(``nbtoolkit.interop.rebound`` needs the optional extra ``nbtoolkit[rebound]``)."""
