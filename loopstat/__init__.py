"""loopstat: the health of asyncio event loops (lag, tasks, utilization, stalls), sent to StatsD/DogStatsD."""

from loopstat._install import install
from loopstat._options import Flavor
from loopstat.monitor import Monitor
from loopstat.probes.stall_capture import Stall
from loopstat.settings import Settings

__all__ = ["Flavor", "Monitor", "Settings", "Stall", "__version__", "install"]
__version__ = "0.1.0"
