"""Fleet mode: several bot processes (workers) of one account on one PostgreSQL database.

Imported lazily (``bot.fleet.setup``): psycopg is the ``fleet`` extra, and the one-process
bot never needs it.
"""

from bot.errors import CallbotError


class FleetLost(CallbotError):
    """The worker's session with the database ended (or never began): it is no longer part
    of the fleet. ``callbot run`` exits with code 1 and one line saying why."""
