"""exchange-adapter-mailbox: an example adapter for the exchange bus (a SQLite mailbox shared with the E-Office)."""

__version__ = "0.1.0"
