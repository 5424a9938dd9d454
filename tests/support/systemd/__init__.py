"""notify-launcher under a real systemd: `harness` (host side) and the files it puts into the
container (boot.sh, scenario.sh, the unit and keepalived.conf files), beside it.  README.md says more."""
