"""mcsync: get microcredentials from institutional exports into Edubadges, RIO and the DUO register."""

__version__ = "0.1.0"
