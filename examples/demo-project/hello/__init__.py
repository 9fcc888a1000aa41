"""The example project of the makima quickstart."""

__version__ = "0.1.0"
