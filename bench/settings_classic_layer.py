"""The portal's settings with channels-redis' classic RedisChannelLayer, for the benchmark's comparison only.

The old deployment used it: with its default pool it failed with MaxConnectionsError at ~200 dashboards.
"""

from fabomatic.settings import *  # noqa: F403
from fabomatic.settings import REDIS_URL

CHANNEL_LAYERS = {
    "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}},
}
