"""notify-launcher: keepalived notify_fifo_script that runs actions detached, serialized, in order."""

__version__ = "0.1.0"
