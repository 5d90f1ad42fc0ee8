"""The entry point of `wanbalanced` and `python -m wanbalanced`.

It holds SIGHUP back before anything else runs: the configuration and the
libraries take one to several seconds to import in the lab, and SIGHUP's
default action would kill a daemon that is starting. Only the interpreter's
own start-up (before this module runs) is still exposed, so nothing is
imported before the signal is blocked.
"""

import sys

try:
    # The C module itself: `signal` imports enum and functools first, which
    # costs about 80 ms of exposure in the lab (UML, hostfs).
    import _signal as _sig  # type: ignore[import-not-found]  # no stubs: the same API as signal
except ImportError:  # pragma: no cover - another interpreter than CPython
    import signal as _sig


def main() -> int:
    """Hold SIGHUP for `run`, then run the command line."""
    if "run" in sys.argv[1:]:
        # Blocked, not ignored: a reload asked for meanwhile stays pending and
        # is delivered once the daemon's loop handles SIGHUP (daemon.run).
        _sig.pthread_sigmask(_sig.SIG_BLOCK, {_sig.SIGHUP})
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
