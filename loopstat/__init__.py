"""loopstat: the health of asyncio event loops (lag, tasks, utilization, stalls), sent to StatsD/DogStatsD."""

from loopstat._install import install
from loopstat._options import Flavor, Settings
from loopstat.monitor import Monitor
from loopstat.probes.stall_capture import Stall

__all__ = ["Flavor", "Monitor", "Settings", "Stall", "__version__", "install"]
__version__ = "0.1.0"
