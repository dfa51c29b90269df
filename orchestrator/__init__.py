"""edgefarm controller: configuration, planning, scheduling on Ray, transports, results, reports.

Everything here runs on the controller machine (Python 3.11). The device side
lives in ``agents/``.
"""

__version__ = "0.1.0"
