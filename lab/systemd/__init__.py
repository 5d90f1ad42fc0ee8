"""The systemd lab: a Debian 12 root with real systemd, booted in User-Mode Linux.

Where ``lab/uml.py`` boots the UML kernel with the host's own filesystem and a
shell script as PID 1, this boots a real Debian system: systemd as PID 1,
journald, D-Bus, a router's view of ``systemctl``.  It is what the end-to-end
test of the systemd unit (``tests/e2e/``, ``make e2e``) runs in.

* ``lab/systemd/rootfs.py``: the Debian root (mmdebstrap, cached and built
  atomically) and the wheelhouse for the offline guest.
* ``lab/systemd/boot.py``: one boot of a private copy of that root, host
  directories mounted with hostfs, a job run by a driver unit, results back.
* ``lab/systemd/driver.py``: the driver, run inside the guest.

From the shell: ``python -m lab.systemd --help``.
"""
