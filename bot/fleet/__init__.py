"""Fleet mode: several bot processes (workers) of one account on one PostgreSQL database.

Imported lazily (``bot.fleet.setup``): psycopg is the ``fleet`` extra, and the one-process
bot never needs it.
"""


class FleetLost(Exception):
    """The worker's session with the database ended: it is no longer part of the fleet."""
