"""loopstat: event-loop lag and live tasks of asyncio applications, sent to StatsD/DogStatsD."""

from loopstat.monitor import Monitor, install
from loopstat.settings import Settings

__all__ = ["Monitor", "Settings", "__version__", "install"]
__version__ = "0.1.0"
