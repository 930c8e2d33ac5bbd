"""The path older model folders name in modules.json (st_module.LEGACY_TYPE): the module is leap_core.serve.st_module.

Kept so that a folder saved before the move (and before leap_early_exit.py shipped in folders) still loads.
"""

from leap_core.serve.st_module import LeapEarlyExit

__all__ = ["LeapEarlyExit"]
